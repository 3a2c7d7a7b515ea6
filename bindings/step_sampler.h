// StepSampler: samples every row of one decode step in one call. Each open sequence keeps its own
// settings (alpha of every pair, temperature/top-k/top-p/min-p chain, seed, logprobs wanted); a
// step hands (output row, sequence) pairs and gets back per row the token, whether RAST's choice
// differs from the large model's own argmax, and on request the chosen token's log-probability
// and the top-k log-probabilities of the distribution it was drawn from.
//
// Per row: z = z_large + sum_k alpha_k * (z_tuned_k - z_base_k) over the ids every model scores
// (ids >= n_shared and padding ids are never chosen), computed exactly as the delta sampler does.
// Greedy rows take the argmax of z in one vectorized pass (rast_greedy_argmax, no candidate
// array); sampled rows run llama.cpp's own samplers (the same links, order and seed as
// SamplerChain) on a candidate array, so both paths choose what the one-row-at-a-time chain
// chooses. With top-k on (always the first truncation link) that array holds only the k ids of
// largest z, picked in one pass over the row (rast_top_k_combined): what llama.cpp's top-k keeps of
// the full array, without filling and partially sorting 152k candidates per row. Rows are spread over a small persistent thread pool; the logits of every context are
// fetched (which waits for that context's queued work) on the calling thread first. An exception
// in a worker is caught and rethrown on the caller once every worker has finished.
#pragma once

#include "llama.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// Runs fn(item, worker) for item in [0, n) on the caller (worker 0) and n_workers - 1 threads.
class RowPool {
  public:
    explicit RowPool(size_t n_workers);
    ~RowPool();
    size_t size() const { return threads_.size() + 1; }
    // spread = false: every item on the caller (work too small to pay for waking threads)
    void run(size_t n_items, const std::function<void(size_t, size_t)> & fn, bool spread = true);

  private:
    void work(size_t worker);
    void drain(size_t worker);

    std::vector<std::thread>                   threads_;
    std::mutex                                 mutex_;
    std::condition_variable                    start_, done_;
    const std::function<void(size_t, size_t)> * fn_ = nullptr;
    size_t                                     n_items_ = 0;
    std::atomic<size_t>                        next_{0};
    size_t                                     pending_ = 0;
    uint64_t                                   round_ = 0;
    bool                                       stopping_ = false;
    std::exception_ptr                         error_;
};

struct rast_step_seq {
    bool                 greedy = true;
    std::vector<float>   alphas;          // one per pair
    int32_t              n_logprobs = -1; // -1: none; 0: the chosen token's; k: also the top k
    int32_t              top_k = 0;       // > 0: only the top_k ids are candidates (selected without a full array)
    llama_sampler *      trunc = nullptr; // truncation + temperature links (a chain, maybe empty)
    llama_sampler *      dist  = nullptr; // the seeded draw
    ~rast_step_seq();
};

struct rast_step_out {
    int32_t * tokens;
    uint8_t * changed;
    float *   logprob;   // NaN where not asked
    int32_t * top_ids;   // n x k_max, -1 padded
    float *   top_lp;    // n x k_max, NaN padded
    int32_t   k_max;
};

class StepSampler {
  public:
    StepSampler(llama_context * ctx_large, std::vector<std::pair<llama_context *, llama_context *>> pairs,
                int32_t n_shared, size_t n_threads);

    int32_t open(float temp, int32_t top_k, float top_p, float min_p, uint32_t seed, const std::string & order,
                 std::vector<float> alphas, int32_t n_logprobs);
    void close(int32_t handle);
    int32_t n_logprobs(int32_t handle) const;
    size_t n_open() const;
    size_t n_threads() const { return pool_.size(); }

    // rows[i]: output index of the last decode (as llama_get_logits_ith takes it); handles[i]: a sequence.
    void sample(const std::vector<int32_t> & rows, const std::vector<int32_t> & handles, const rast_step_out & out);

  private:
    rast_step_seq & seq(int32_t handle) const;
    void sample_row(size_t i, size_t worker, const std::vector<int32_t> & handles, const rast_step_out & out);

    llama_context *                                           ctx_large_;
    std::vector<std::pair<llama_context *, llama_context *>> pairs_;
    int32_t                                                   n_shared_;
    int32_t                                                   n_vocab_;
    std::vector<uint8_t>                                      excluded_;
    std::vector<int32_t>                                      excluded_ids_;  // the ids excluded_ marks, ascending
    std::vector<std::unique_ptr<rast_step_seq>>               seqs_;
    std::vector<int32_t>                                      free_;
    std::vector<std::vector<llama_token_data>>                scratch_; // one candidate array per worker
    // per step: the logits rows of every context (large, then tuned/base of each pair), per row i
    std::vector<const float *>                                 row_logits_;
    RowPool                                                   pool_;
};
