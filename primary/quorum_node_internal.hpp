#pragma once
// Private to quorum_node*.cpp: the fan-out that reads and write-like requests go through
// (quorum_node_fan_out.cpp) and the error text of report_bad events. Not for other callers.

#include <boost/container/small_vector.hpp>

#include <string>

#include "shared/base/error.hpp"
#include "shared/base/task.hpp"
#include "shared/block/block_node.hpp"

namespace colo {

// The children's outcomes of one request, in child order. Quorums are small: no allocation.
using Outcomes = boost::container::small_vector<IoResult, 4>;
using ChildOps = boost::container::small_vector<Task<IoResult>, 4>;

// Runs every operation concurrently and stores the outcomes in `results`, in order. The last
// operation runs on the caller's frame, each other one in its own coroutine; whichever
// finishes last resumes the caller directly. One child: no coroutine is spawned at all.
Task<void> fan_out(ChildOps& ops, Outcomes& results);

// A child's error as the events and log lines name it.
std::string errno_name(const error_code& ec);

}  // namespace colo
