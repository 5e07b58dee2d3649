#include "shared/nbd/nbd_negotiation.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace colo::nbd {

namespace {

using Next = NbdNegotiation::Step::Next;

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

}  // namespace

std::string NbdNegotiation::on_client_flags(std::uint32_t flags) {
  if (!(flags & kClientFixedNewstyle)) return "client does not use the fixed newstyle handshake";
  if ((flags & ~(kClientFixedNewstyle | kClientNoZeroes)) != 0) {
    return fmt::format("unknown client flags {:#x}", flags);
  }
  no_zeroes_ = (flags & kClientNoZeroes) != 0;
  return {};
}

const ExportDescription* NbdNegotiation::find(const std::string& name,
                                              std::size_t* index) const {
  for (std::size_t i = 0; i < exports_.size(); ++i) {
    if (exports_[i].name == name) {
      *index = i;
      return &exports_[i];
    }
  }
  if (name.empty() && !exports_.empty()) {
    *index = 0;
    return &exports_[0];
  }
  return nullptr;
}

const ExportDescription* NbdNegotiation::resolve(const std::string& requested,
                                                 std::size_t* index,
                                                 std::optional<std::string>* token) const {
  token->reset();
  if (const ExportDescription* e = find(requested, index); e != nullptr) return e;
  const auto sep = requested.rfind(kSessionSeparator);
  if (sep == std::string::npos) return nullptr;
  const ExportDescription* e = find(requested.substr(0, sep), index);
  if (e == nullptr || e->admission == nullptr) return nullptr;
  *token = requested.substr(sep + kSessionSeparator.size());
  return e;
}

ExportShape NbdNegotiation::shape(std::size_t export_index) const {
  const ExportDescription& e = exports_[export_index];
  ExportShape s;
  s.size_bytes = e.size_bytes;
  s.block_bytes_min = e.block_bytes_min;
  s.payload_bytes_max = e.payload_bytes_max;
  s.transmission_flags = transmission_flags(e.caps, structured_);
  s.structured_replies = structured_;
  return s;
}

void NbdNegotiation::append_info(std::vector<std::byte>& out, std::uint32_t option,
                                 std::uint16_t type, const ExportDescription& e) const {
  std::vector<std::byte> p;
  switch (type) {
    case kInfoExport:
      p.resize(12);
      put_u16(p.data(), kInfoExport);
      put_u64(p.data() + 2, e.size_bytes);
      put_u16(p.data() + 10, transmission_flags(e.caps, structured_));
      break;
    case kInfoName:
      p.resize(2 + e.name.size());
      put_u16(p.data(), kInfoName);
      if (!e.name.empty()) std::memcpy(p.data() + 2, e.name.data(), e.name.size());
      break;
    case kInfoDescription:
      p.resize(2 + e.description.size());
      put_u16(p.data(), kInfoDescription);
      if (!e.description.empty()) {
        std::memcpy(p.data() + 2, e.description.data(), e.description.size());
      }
      break;
    case kInfoBlockSize:
      p.resize(14);
      put_u16(p.data(), kInfoBlockSize);
      put_u32(p.data() + 2, e.block_bytes_min);
      put_u32(p.data() + 6, e.block_bytes_preferred);
      put_u32(p.data() + 10, e.payload_bytes_max);
      break;
    default:
      return;  // unknown information types are ignored
  }
  append_option_reply(out, option, kRepInfo, p);
}

NbdNegotiation::Step NbdNegotiation::on_info_or_go(std::uint32_t option,
                                                   std::span<const std::byte> data) {
  Step step;
  auto req = parse_info_request(data);
  if (!req) {
    append_option_reply(step.reply, option, kRepErrInvalid, "malformed INFO/GO request");
    return step;
  }
  std::size_t index = 0;
  std::optional<std::string> token;
  const ExportDescription* e = resolve(req->name, &index, &token);
  if (e == nullptr) {
    append_option_reply(step.reply, option, kRepErrUnknown,
                        fmt::format("no export named \"{}\"", req->name));
    return step;
  }
  ExportAdmission::Verdict verdict;
  if (e->admission != nullptr) {
    verdict = e->admission->admit(token);
    if (!verdict.admitted) {
      const std::string why = fmt::format("export \"{}\": {}", e->name, verdict.why);
      append_option_reply(step.reply, option, kRepErrPolicy, why);
      step.refused = why;
      return step;
    }
  }
  // INFO_EXPORT always, INFO_BLOCK_SIZE always (our constraints are the truth the client
  // should know), name and description when asked for.
  append_info(step.reply, option, kInfoExport, *e);
  append_info(step.reply, option, kInfoBlockSize, *e);
  std::vector<std::uint16_t> sent{kInfoExport, kInfoBlockSize};
  for (std::uint16_t t : req->info_types) {
    if (std::find(sent.begin(), sent.end(), t) != sent.end()) continue;
    if (t == kInfoDescription && e->description.empty()) continue;
    append_info(step.reply, option, t, *e);
    sent.push_back(t);
  }
  append_option_reply(step.reply, option, kRepAck);
  if (option == kOptGo) {
    step.next = Next::transmission;
    step.export_index = index;
    step.session = verdict.session;
  }
  return step;
}

void NbdNegotiation::on_tls_started() {
  tls_active_ = true;
  // The spec: a client that wants structured replies under TLS asks again.
  structured_ = false;
}

NbdNegotiation::Step NbdNegotiation::on_starttls(std::span<const std::byte> data) {
  Step step;
  if (tls_ == TlsPolicy::off) {
    append_option_reply(step.reply, kOptStartTls, kRepErrPolicy, "TLS is not available");
    return step;
  }
  if (tls_active_) {
    append_option_reply(step.reply, kOptStartTls, kRepErrInvalid, "TLS is already active");
    return step;
  }
  if (!data.empty()) {
    append_option_reply(step.reply, kOptStartTls, kRepErrInvalid, "STARTTLS takes no data");
    return step;
  }
  append_option_reply(step.reply, kOptStartTls, kRepAck);
  step.next = Next::starttls;
  return step;
}

NbdNegotiation::Step NbdNegotiation::on_option(std::uint32_t option,
                                               std::span<const std::byte> data) {
  Step step;
  if (tls_ == TlsPolicy::require && !tls_active_ && option != kOptStartTls &&
      option != kOptAbort) {
    // FORCEDTLS: nothing is negotiated, and no export is named to a client, in plaintext.
    if (option == kOptExportName) {
      step.next = Next::close;
      step.why = "EXPORT_NAME without TLS on a listener that requires TLS";
      return step;
    }
    append_option_reply(step.reply, option, kRepErrTlsReqd, "TLS is required: send STARTTLS");
    return step;
  }
  switch (option) {
    case kOptExportName: {
      std::string name(reinterpret_cast<const char*>(data.data()), data.size());
      std::size_t index = 0;
      std::optional<std::string> token;
      const ExportDescription* e = resolve(name, &index, &token);
      if (e == nullptr) {
        // The protocol has no error reply for EXPORT_NAME: the server just closes.
        step.next = Next::close;
        step.why = fmt::format("EXPORT_NAME for unknown export \"{}\"", name);
        return step;
      }
      if (e->admission != nullptr) {
        const ExportAdmission::Verdict verdict = e->admission->admit(token);
        if (!verdict.admitted) {
          step.next = Next::close;
          step.why = fmt::format("EXPORT_NAME refused: export \"{}\": {}", e->name, verdict.why);
          return step;
        }
        step.session = verdict.session;
      }
      step.reply.resize(10 + (no_zeroes_ ? 0 : kExportNameZeroes));
      put_u64(step.reply.data(), e->size_bytes);
      put_u16(step.reply.data() + 8, transmission_flags(e->caps, structured_));
      step.next = Next::transmission;
      step.export_index = index;
      return step;
    }
    case kOptAbort:
      append_option_reply(step.reply, option, kRepAck);
      step.next = Next::close;
      return step;
    case kOptList:
      if (!data.empty()) {
        append_option_reply(step.reply, option, kRepErrInvalid, "LIST takes no data");
        return step;
      }
      for (const ExportDescription& e : exports_) {
        std::vector<std::byte> p(4);
        put_u32(p.data(), static_cast<std::uint32_t>(e.name.size()));
        auto name = bytes_of(e.name);
        auto desc = bytes_of(e.description);
        p.insert(p.end(), name.begin(), name.end());
        p.insert(p.end(), desc.begin(), desc.end());
        append_option_reply(step.reply, option, kRepServer, p);
      }
      append_option_reply(step.reply, option, kRepAck);
      return step;
    case kOptStartTls:
      return on_starttls(data);
    case kOptInfo:
    case kOptGo:
      return on_info_or_go(option, data);
    case kOptStructuredReply:
      if (!data.empty()) {
        append_option_reply(step.reply, option, kRepErrInvalid,
                            "STRUCTURED_REPLY takes no data");
        return step;
      }
      structured_ = true;
      append_option_reply(step.reply, option, kRepAck);
      return step;
    default:
      append_option_reply(step.reply, option, kRepErrUnsup,
                          fmt::format("option {} is not supported", option));
      return step;
  }
}

}  // namespace colo::nbd
