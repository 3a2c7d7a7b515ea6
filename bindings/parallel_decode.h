// ParallelDecoder: runs llama_decode of one batch in several llama_contexts at once. Context 0
// (the large model) decodes on the calling thread while each other context decodes on its own
// persistent worker thread; decode_all returns when every context has returned, with each
// context's return code. llama.cpp contexts are independent (own KV cache, own scheduler, own
// backend stream on a GPU), so their decodes may overlap; the logits of each are read later by
// llama_get_logits_ith, which waits only for that context's stream. The decoder never owns the
// contexts: the caller keeps them alive until close().
#pragma once

#include "llama.h"

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

class ParallelDecoder {
  public:
    explicit ParallelDecoder(std::vector<llama_context *> contexts) : contexts_(std::move(contexts)) {
        for (size_t i = 1; i < contexts_.size(); ++i) {
            workers_.emplace_back([this, i] { work(i); });
        }
    }

    ~ParallelDecoder() { close(); }

    void close() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (stopping_) return;
            stopping_ = true;
        }
        start_.notify_all();
        for (auto & worker : workers_) worker.join();
        workers_.clear();
    }

    bool is_open() const { return !stopping_; }

    size_t size() const { return contexts_.size(); }

    std::vector<int32_t> decode_all(const llama_batch & batch) {
        std::vector<int32_t> codes(contexts_.size(), 0);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            batch_   = &batch;
            codes_   = &codes;
            pending_ = contexts_.size() - 1;
            ++round_;
        }
        start_.notify_all();
        codes[0] = llama_decode(contexts_[0], batch);
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return pending_ == 0; });
        batch_ = nullptr;
        codes_ = nullptr;
        return codes;
    }

  private:
    void work(size_t index) {
        uint64_t seen = 0;
        for (;;) {
            const llama_batch * batch;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                start_.wait(lock, [&] { return stopping_ || round_ != seen; });
                if (stopping_) return;
                seen  = round_;
                batch = batch_;
            }
            const int32_t code = llama_decode(contexts_[index], *batch);
            std::lock_guard<std::mutex> lock(mutex_);
            (*codes_)[index] = code;
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::vector<llama_context *> contexts_;
    std::vector<std::thread>     workers_;
    std::mutex                   mutex_;
    std::condition_variable      start_, done_;
    const llama_batch *          batch_   = nullptr;
    std::vector<int32_t> *       codes_   = nullptr;
    size_t                       pending_ = 0;
    uint64_t                     round_   = 0;
    bool                         stopping_ = false;
};
