// CUDA stream priorities for llama.cpp contexts, without changing llama.cpp.
//
// ggml-cuda gives every backend (one per llama_context) its own stream, created lazily with
// cudaStreamCreateWithFlags, i.e. at the default priority. At batch 1 the large model's kernels and
// the small pair's kernels then compete as equals for the SMs, and the small ones delay the large
// model's long chain of kernels. rast_stream_priority_install() redirects libggml-cuda's import of
// that one function (its GOT slot; no other library in the process is touched) to a wrapper that
// creates the stream at the priority last given to rast_stream_priority_set(): 0 (the default)
// creates exactly what ggml asked for. Streams keep the priority they were created with, so the
// caller sets a priority, makes the context create its stream (a first decode), and sets it back.
// Linux/ELF only; install() reports false where there is no libggml-cuda (CPU, Metal builds).
#pragma once

#include <string>

struct rast_stream_priority_status {
    bool        installed = false;  // the wrapper serves libggml-cuda's stream creation
    std::string detail;             // why not, or which library was patched
    int         least = 0;          // CUDA priority range: least (default) and greatest (most urgent)
    int         greatest = 0;
};

// Idempotent; safe to call from any thread before contexts decode.
rast_stream_priority_status rast_stream_priority_install();

// Priority for streams ggml-cuda creates from now on (clamped to the device's range); returns the
// value in force.
int rast_stream_priority_set(int priority);

// Streams created so far by the wrapper with a non-default priority.
int rast_stream_priority_n_raised();
