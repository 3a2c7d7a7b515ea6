// ParallelDecoder: runs llama_decode of one batch in several llama_contexts at once. Context 0
// (the large model) decodes on the calling thread while each other context decodes on its own
// persistent worker thread; decode_all returns when every context has returned, with each
// context's return code. llama.cpp contexts are independent (own KV cache, own scheduler, own
// backend stream on a GPU), so their decodes may overlap; the logits of each are read later by
// llama_get_logits_ith, which waits only for that context's stream. The decoder never owns the
// contexts: the caller keeps them alive until close().
//
// Failure: llama_decode is a C function but can throw (std::bad_alloc, a graph error). decode_all
// always waits for every worker of the round before it returns or throws, so the round's state is
// never freed while a worker still writes it; an exception from any context (the first one seen)
// is rethrown on the calling thread after that wait. A worker never lets an exception escape (that
// would call std::terminate), and a constructor that cannot start all its threads joins the ones
// it started before it throws.
#pragma once

#include "llama.h"

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

class ParallelDecoder {
  public:
    using decode_fn = int32_t (*)(llama_context *, llama_batch);

    // decode: llama_decode, or a stand-in for tests of the failure paths
    explicit ParallelDecoder(std::vector<llama_context *> contexts, decode_fn decode = llama_decode)
        : contexts_(std::move(contexts)), decode_(decode) {
        try {
            workers_.reserve(contexts_.size());
            for (size_t i = 1; i < contexts_.size(); ++i) {
                workers_.emplace_back([this, i] { work(i); });
            }
        } catch (...) {
            close();  // joins the threads already started; a joinable std::thread would terminate
            throw;
        }
    }

    ParallelDecoder(const ParallelDecoder &) = delete;
    ParallelDecoder & operator=(const ParallelDecoder &) = delete;

    ~ParallelDecoder() { close(); }

    void close() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (stopping_) return;
            stopping_ = true;
        }
        start_.notify_all();
        for (auto & worker : workers_) {
            if (worker.joinable()) worker.join();
        }
        workers_.clear();
    }

    bool is_open() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return !stopping_;
    }

    size_t size() const { return contexts_.size(); }

    std::vector<int32_t> decode_all(const llama_batch & batch) {
        Round round(contexts_.size());
        {
            std::lock_guard<std::mutex> lock(mutex_);
            round_state_ = &round;
            batch_       = &batch;
            pending_     = workers_.size();
            ++round_;
        }
        start_.notify_all();
        std::exception_ptr own_error;
        try {
            round.codes[0] = decode_(contexts_[0], batch);
        } catch (...) {
            own_error = std::current_exception();
        }
        {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [this] { return pending_ == 0; });
            round_state_ = nullptr;
            batch_       = nullptr;
        }
        if (own_error) std::rethrow_exception(own_error);
        if (round.error) std::rethrow_exception(round.error);
        return std::move(round.codes);
    }

  private:
    struct Round {
        explicit Round(size_t n) : codes(n, 0) {}
        std::vector<int32_t> codes;
        std::exception_ptr   error;  // a worker's first exception (written under mutex_)
    };

    void work(size_t index) {
        uint64_t seen = 0;
        for (;;) {
            const llama_batch * batch;
            Round * round;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                start_.wait(lock, [&] { return stopping_ || round_ != seen; });
                if (stopping_) return;
                seen  = round_;
                batch = batch_;
                round = round_state_;
            }
            int32_t code = 0;
            std::exception_ptr error;
            try {
                code = decode_(contexts_[index], *batch);
            } catch (...) {
                error = std::current_exception();
            }
            std::lock_guard<std::mutex> lock(mutex_);
            round->codes[index] = code;
            if (error && !round->error) round->error = error;
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::vector<llama_context *> contexts_;
    decode_fn                    decode_;
    std::vector<std::thread>     workers_;
    mutable std::mutex           mutex_;
    std::condition_variable      start_, done_;
    const llama_batch *          batch_       = nullptr;
    Round *                      round_state_ = nullptr;
    size_t                       pending_     = 0;
    uint64_t                     round_       = 0;
    bool                         stopping_    = false;
};
