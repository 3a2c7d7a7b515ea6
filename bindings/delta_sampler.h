// RAST delta sampler: a llama_sampler that adds sum_i alpha_i * (z_tuned_i - z_base_i) to the
// candidates of the large model, reading the small pairs' logits for the same output row straight
// from their llama_contexts. It is meant to be the first link of a llama_sampler_chain; ids at or
// above n_shared (rows the small pairs cannot score) and ids marked excluded (padding tokens) get
// -inf so that no later sampler can pick them. Plus a "probe" sampler that copies the candidates it
// sees into a dense n_vocab buffer (for tests and token-level analysis), and vocabulary helpers.
#pragma once

#include "llama.h"

#include <cstdint>
#include <vector>

struct rast_pair {
    float                  alpha;
    llama_context        * ctx_tuned;
    llama_context        * ctx_base;
};

struct rast_delta_ctx {
    std::vector<rast_pair> pairs;
    int32_t                n_shared;     // ids < n_shared are scored by every model
    std::vector<uint8_t>   excluded;     // size n_shared: 1 = never sample (padding/unused)
    int32_t                output_index; // row of the logits to read in every context
    bool                   missing_rows = false; // set by apply when a context had no row output_index
};

llama_sampler * rast_delta_init(std::vector<rast_pair> pairs, int32_t n_shared, std::vector<uint8_t> excluded);
rast_delta_ctx * rast_delta_get_ctx(llama_sampler * smpl);

// How the delta moved one step's choice: the large model's own top id and the log-probabilities of
// the chosen id under the large model alone and under RAST (log-softmax over the ids the delta
// sampler allows, before temperature and truncation).
struct rast_delta_stats {
    llama_token large_top;
    float       logp_large;
    float       logp_rast;
};

// z_large: the large model's logits at ctx->output_index (n_vocab wide, only ids < n_shared read).
rast_delta_stats rast_delta_step_stats(const rast_delta_ctx * ctx, const float * z_large, llama_token chosen);

// The greedy RAST choice without a candidate array: over the ids < n_shared not in excluded_ids
// (sorted), the first id of the largest z = large + sum_k alpha_k * (tuned_k - base_k) (the delta
// sampler's float operations, so both choose alike), and the large model's own first argmax. Ids
// are combined a block at a time (vectorized) and only a block whose maximum beats the best so far
// is searched for its first maximal id. token/large_top are -1 when no id is allowed (or all are -inf).
struct rast_greedy_choice {
    int32_t token;
    float   best;       // z of token
    int32_t large_top;
};

// pair_logits: tuned_0, base_0, tuned_1, base_1, ... (n_vocab wide rows)
rast_greedy_choice rast_greedy_argmax(const float * large, const float * const * pair_logits, const float * alphas,
                                      size_t n_pairs, int32_t n_shared, const std::vector<int32_t> & excluded_ids);

// The k largest z (as above) over the ids < n_shared not in excluded_ids, as {id, z, 0} in `out`,
// unordered (at a tie on the k-th value, any of the tied ids: as llama.cpp's top-k, whose partial
// sort is not stable), without a candidate array of the whole vocabulary; returns the large
// model's own first argmax. llama.cpp's top-k link then sorts these k as it sorts the full array.
int32_t rast_top_k_combined(const float * large, const float * const * pair_logits, const float * alphas,
                            size_t n_pairs, int32_t n_shared, const std::vector<int32_t> & excluded_ids, int32_t k,
                            std::vector<llama_token_data> & out);

// The same for one row: the k largest of z = row (+ add, where add is not null: `z = row; z += add`
// in float) over the ids below n not in excluded_ids (ascending).
void rast_top_k_row(const float * row, const float * add, int32_t n, const std::vector<int32_t> & excluded_ids,
                    int32_t k, std::vector<llama_token_data> & out);

// top_k when picking the top-k ids in one pass (rast_top_k_combined) pays: top-k on and at most a
// quarter of n_shared (above, a full candidate array is as cheap); else 0.
inline int32_t rast_one_pass_top_k(int32_t top_k, int32_t n_shared) {
    return top_k > 0 && (int64_t) top_k * 4 <= n_shared ? top_k : 0;
}

// The largest of z[0..m) that is not NaN (-inf if none), as `if (z[j] > best) best = z[j]` finds it (SSE2 where there is).
float rast_block_max(const float * z, int32_t m);

// The ids marked 1 in excluded, ascending.
std::vector<int32_t> rast_excluded_ids(const std::vector<uint8_t> & excluded);

struct rast_probe_ctx {
    bool               enabled = false;
    std::vector<float> logits;   // size n_vocab, -inf where a candidate was removed
};

llama_sampler * rast_probe_init(int32_t n_vocab);
rast_probe_ctx * rast_probe_get_ctx(llama_sampler * smpl);

// First token id < n where the two vocabularies have different text, or -1.
int32_t rast_vocab_first_mismatch(const llama_vocab * a, const llama_vocab * b, int32_t n);

// 1 for each id < n whose attribute in vocab marks it unused (padding rows), else 0.
void rast_vocab_mark_unused(const llama_vocab * vocab, int32_t n, std::vector<uint8_t> & excluded);
