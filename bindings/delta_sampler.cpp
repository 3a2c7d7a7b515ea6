#include "delta_sampler.h"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char * rast_delta_name(const llama_sampler * /*smpl*/) {
    return "rast-delta";
}

static void rast_delta_apply(llama_sampler * smpl, llama_token_data_array * cur_p) {
    auto * ctx = (rast_delta_ctx *) smpl->ctx;
    const int32_t n_shared = ctx->n_shared;
    const uint8_t * excluded = ctx->excluded.data();

    // llama_get_logits_ith waits for that context's pending computation, so with overlapped
    // decoding this is where the sampler blocks, and only on the logits it needs.
    const size_t n_pairs = ctx->pairs.size();
    std::vector<const float *> tuned(n_pairs), base(n_pairs);
    for (size_t k = 0; k < n_pairs; ++k) {
        tuned[k] = llama_get_logits_ith(ctx->pairs[k].ctx_tuned, ctx->output_index);
        base[k]  = llama_get_logits_ith(ctx->pairs[k].ctx_base,  ctx->output_index);
        if (tuned[k] == nullptr || base[k] == nullptr) {
            // A C callback cannot throw: leave the candidates alone and let the caller raise
            // (SamplerChain::sample checks the rows before and this flag after).
            ctx->missing_rows = true;
            return;
        }
    }

    llama_token_data * data = cur_p->data;
    const size_t n = cur_p->size;
    if (n_pairs == 1) {
        const float alpha = ctx->pairs[0].alpha;
        const float * t = tuned[0];
        const float * b = base[0];
        for (size_t i = 0; i < n; ++i) {
            const llama_token id = data[i].id;
            if (id >= n_shared || excluded[id]) {
                data[i].logit = -INFINITY;
            } else {
                data[i].logit += alpha * (t[id] - b[id]);
            }
        }
    } else {
        for (size_t i = 0; i < n; ++i) {
            const llama_token id = data[i].id;
            if (id >= n_shared || excluded[id]) {
                data[i].logit = -INFINITY;
                continue;
            }
            float delta = 0.0f;
            for (size_t k = 0; k < n_pairs; ++k) {
                delta += ctx->pairs[k].alpha * (tuned[k][id] - base[k][id]);
            }
            data[i].logit += delta;
        }
    }
    cur_p->sorted = false;
}

static llama_sampler * rast_delta_clone(const llama_sampler * smpl) {
    const auto * ctx = (const rast_delta_ctx *) smpl->ctx;
    llama_sampler * copy = rast_delta_init(ctx->pairs, ctx->n_shared, ctx->excluded);
    rast_delta_get_ctx(copy)->output_index = ctx->output_index;
    return copy;
}

static void rast_delta_free(llama_sampler * smpl) {
    delete (rast_delta_ctx *) smpl->ctx;
}

static llama_sampler_i rast_delta_i = {
    /* .name              = */ rast_delta_name,
    /* .accept            = */ nullptr,
    /* .apply             = */ rast_delta_apply,
    /* .reset             = */ nullptr,
    /* .clone             = */ rast_delta_clone,
    /* .free              = */ rast_delta_free,
    /* .backend_init      = */ nullptr,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ nullptr,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ nullptr,
    /* .copy_state        = */ nullptr,
};

llama_sampler * rast_delta_init(std::vector<rast_pair> pairs, int32_t n_shared, std::vector<uint8_t> excluded) {
    excluded.resize(n_shared, 0);
    auto * ctx = new rast_delta_ctx{std::move(pairs), n_shared, std::move(excluded), -1, false};
    return llama_sampler_init(&rast_delta_i, ctx);
}

rast_delta_ctx * rast_delta_get_ctx(llama_sampler * smpl) {
    return smpl->iface == &rast_delta_i ? (rast_delta_ctx *) smpl->ctx : nullptr;
}

rast_delta_stats rast_delta_step_stats(const rast_delta_ctx * ctx, const float * z_large, llama_token chosen) {
    const size_t n_pairs = ctx->pairs.size();
    std::vector<const float *> tuned(n_pairs), base(n_pairs);
    for (size_t k = 0; k < n_pairs; ++k) {
        tuned[k] = llama_get_logits_ith(ctx->pairs[k].ctx_tuned, ctx->output_index);
        base[k]  = llama_get_logits_ith(ctx->pairs[k].ctx_base,  ctx->output_index);
        if (tuned[k] == nullptr || base[k] == nullptr || z_large == nullptr) {
            return {-1, -INFINITY, -INFINITY};  // no row to compare (callers check rows first)
        }
    }
    auto rast_logit = [&](llama_token id) {
        float z = z_large[id];
        for (size_t k = 0; k < n_pairs; ++k) {
            z += ctx->pairs[k].alpha * (tuned[k][id] - base[k][id]);
        }
        return z;
    };

    llama_token large_top = -1;
    float max_large = -INFINITY, max_rast = -INFINITY;
    for (llama_token id = 0; id < ctx->n_shared; ++id) {
        if (ctx->excluded[id]) continue;
        if (z_large[id] > max_large) { max_large = z_large[id]; large_top = id; }
        max_rast = std::max(max_rast, rast_logit(id));
    }
    double sum_large = 0.0, sum_rast = 0.0;
    for (llama_token id = 0; id < ctx->n_shared; ++id) {
        if (ctx->excluded[id]) continue;
        sum_large += std::exp((double) z_large[id] - max_large);
        sum_rast  += std::exp((double) rast_logit(id) - max_rast);
    }
    const bool allowed = chosen >= 0 && chosen < ctx->n_shared && !ctx->excluded[chosen];
    if (!allowed) {
        return {large_top, -INFINITY, -INFINITY};
    }
    return {large_top,
            (float) (z_large[chosen] - max_large - std::log(sum_large)),
            (float) (rast_logit(chosen) - max_rast - std::log(sum_rast))};
}

static const char * rast_probe_name(const llama_sampler * /*smpl*/) {
    return "rast-probe";
}

static void rast_probe_apply(llama_sampler * smpl, llama_token_data_array * cur_p) {
    auto * ctx = (rast_probe_ctx *) smpl->ctx;
    if (!ctx->enabled) {
        return;
    }
    std::fill(ctx->logits.begin(), ctx->logits.end(), -INFINITY);
    const int32_t n_vocab = (int32_t) ctx->logits.size();
    for (size_t i = 0; i < cur_p->size; ++i) {
        const llama_token id = cur_p->data[i].id;
        if (id >= 0 && id < n_vocab) {
            ctx->logits[id] = cur_p->data[i].logit;
        }
    }
}

static llama_sampler * rast_probe_clone(const llama_sampler * smpl) {
    const auto * ctx = (const rast_probe_ctx *) smpl->ctx;
    llama_sampler * copy = rast_probe_init((int32_t) ctx->logits.size());
    rast_probe_get_ctx(copy)->enabled = ctx->enabled;
    return copy;
}

static void rast_probe_free(llama_sampler * smpl) {
    delete (rast_probe_ctx *) smpl->ctx;
}

static llama_sampler_i rast_probe_i = {
    /* .name              = */ rast_probe_name,
    /* .accept            = */ nullptr,
    /* .apply             = */ rast_probe_apply,
    /* .reset             = */ nullptr,
    /* .clone             = */ rast_probe_clone,
    /* .free              = */ rast_probe_free,
    /* .backend_init      = */ nullptr,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ nullptr,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ nullptr,
    /* .copy_state        = */ nullptr,
};

llama_sampler * rast_probe_init(int32_t n_vocab) {
    auto * ctx = new rast_probe_ctx;
    ctx->logits.assign(n_vocab, -INFINITY);
    return llama_sampler_init(&rast_probe_i, ctx);
}

rast_probe_ctx * rast_probe_get_ctx(llama_sampler * smpl) {
    return smpl->iface == &rast_probe_i ? (rast_probe_ctx *) smpl->ctx : nullptr;
}

int32_t rast_vocab_first_mismatch(const llama_vocab * a, const llama_vocab * b, int32_t n) {
    for (int32_t id = 0; id < n; ++id) {
        if (std::strcmp(llama_vocab_get_text(a, id), llama_vocab_get_text(b, id)) != 0) {
            return id;
        }
    }
    return -1;
}

void rast_vocab_mark_unused(const llama_vocab * vocab, int32_t n, std::vector<uint8_t> & excluded) {
    excluded.resize(std::max<size_t>(excluded.size(), (size_t) n), 0);
    for (int32_t id = 0; id < n; ++id) {
        if (llama_vocab_get_attr(vocab, id) & LLAMA_TOKEN_ATTR_UNUSED) {
            excluded[id] = 1;
        }
    }
}

float rast_block_max(const float * z, int32_t m) {
    float best = -INFINITY;
    int32_t j = 0;
#if defined(__SSE2__)
    // _mm_max_ps(a, b) is a > b ? a : b lane by lane (b when a is NaN): the same rule on 8 lanes
    __m128 acc0 = _mm_set1_ps(-INFINITY), acc1 = acc0;
    for (; j + 8 <= m; j += 8) {
        acc0 = _mm_max_ps(_mm_loadu_ps(z + j), acc0);
        acc1 = _mm_max_ps(_mm_loadu_ps(z + j + 4), acc1);
    }
    float lanes[4];
    _mm_storeu_ps(lanes, _mm_max_ps(acc0, acc1));
    for (float v : lanes) best = v > best ? v : best;
#endif
    for (; j < m; ++j) best = z[j] > best ? z[j] : best;
    return best;
}

std::vector<int32_t> rast_excluded_ids(const std::vector<uint8_t> & excluded) {
    std::vector<int32_t> ids;
    for (size_t id = 0; id < excluded.size(); ++id) {
        if (excluded[id]) ids.push_back((int32_t) id);
    }
    return ids;
}

namespace {

constexpr int32_t COMBINE_BLOCK = 512;

// z[0..m) = large + sum_k alpha_k * (tuned_k - base_k) for ids i0..i0+m (the delta sampler's float
// operations), -inf at excluded ids; returns the large row of the block with excluded ids at -inf
// (zl when some id of the block is excluded, else large + i0). next_excluded walks excluded_ids.
const float * combine_block(const float * large, const float * const * pair_logits, const float * alphas,
                            size_t n_pairs, int32_t i0, int32_t m, const std::vector<int32_t> & excluded_ids,
                            size_t & next_excluded, float * z, float * zl) {
    const float * l = large + i0;
    if (n_pairs == 1) {
        const float a = alphas[0];
        const float * t = pair_logits[0] + i0;
        const float * b = pair_logits[1] + i0;
        for (int32_t j = 0; j < m; ++j) z[j] = l[j] + a * (t[j] - b[j]);
    } else {
        for (int32_t j = 0; j < m; ++j) z[j] = 0.0f;
        for (size_t k = 0; k < n_pairs; ++k) {
            const float a = alphas[k];
            const float * t = pair_logits[2 * k] + i0;
            const float * b = pair_logits[2 * k + 1] + i0;
            for (int32_t j = 0; j < m; ++j) z[j] += a * (t[j] - b[j]);
        }
        for (int32_t j = 0; j < m; ++j) z[j] = l[j] + z[j];
    }
    if (next_excluded < excluded_ids.size() && excluded_ids[next_excluded] < i0 + m) {
        std::memcpy(zl, l, m * sizeof(float));
        for (; next_excluded < excluded_ids.size() && excluded_ids[next_excluded] < i0 + m; ++next_excluded) {
            z[excluded_ids[next_excluded] - i0] = zl[excluded_ids[next_excluded] - i0] = -INFINITY;
        }
        l = zl;
    }
    return l;
}

// the first maximal id of the block beats (strictly) the best so far: an earlier id keeps a tie
void first_max_step(const float * z, int32_t i0, int32_t m, float * best, int32_t * id) {
    const float block_best = rast_block_max(z, m);
    if (block_best > *best) {
        *best = block_best;
        *id = i0 + (int32_t) (std::find(z, z + m, block_best) - z);
    }
}

}  // namespace

rast_greedy_choice rast_greedy_argmax(const float * large, const float * const * pair_logits, const float * alphas,
                                      size_t n_pairs, int32_t n_shared, const std::vector<int32_t> & excluded_ids) {
    float z[COMBINE_BLOCK], zl[COMBINE_BLOCK];
    rast_greedy_choice out = {-1, -INFINITY, -1};
    float large_best = -INFINITY;
    size_t next_excluded = 0;
    for (int32_t i0 = 0; i0 < n_shared; i0 += COMBINE_BLOCK) {
        const int32_t m = std::min(COMBINE_BLOCK, n_shared - i0);
        const float * l = combine_block(large, pair_logits, alphas, n_pairs, i0, m, excluded_ids, next_excluded, z, zl);
        first_max_step(z, i0, m, &out.best, &out.token);
        first_max_step(l, i0, m, &large_best, &out.large_top);
    }
    return out;
}

namespace {

// The k largest of a row handed over a block at a time, as {id, z, 0} in `out`, unordered.
// block(i0, m) returns z of ids i0..i0+m (excluded ids -inf). A block whose maximum is below the
// k-th best so far is skipped; candidates gather in a buffer trimmed to the k best when it fills.
template <class Block>
void top_k_blocks(int32_t n, int32_t k, std::vector<llama_token_data> & out, Block block) {
    const size_t keep = (size_t) std::max(k, 1), cap = std::max<size_t>(4 * keep, 256);
    auto by_logit = [](const llama_token_data & a, const llama_token_data & b) { return a.logit > b.logit; };
    auto trim = [&]() {  // the keep largest stay; the smallest of them is the bar a new id must reach
        std::nth_element(out.begin(), out.begin() + (keep - 1), out.end(), by_logit);
        out.resize(keep);
        return out[keep - 1].logit;
    };
    out.clear();
    out.reserve(cap);
    float bar = -INFINITY;  // every id below it is out: `keep` ids at or above it are held
    for (int32_t i0 = 0; i0 < n; i0 += COMBINE_BLOCK) {
        const int32_t m = std::min(COMBINE_BLOCK, n - i0);
        const float * z = block(i0, m);
        if (rast_block_max(z, m) < bar) continue;  // nothing in this block reaches the bar
        for (int32_t j = 0; j < m; ++j) {
            if (z[j] >= bar) {
                out.push_back({i0 + j, z[j], 0.0f});
                if (out.size() == cap) bar = trim();
            }
        }
    }
    if (out.size() > keep) trim();
}

}  // namespace

int32_t rast_top_k_combined(const float * large, const float * const * pair_logits, const float * alphas,
                            size_t n_pairs, int32_t n_shared, const std::vector<int32_t> & excluded_ids, int32_t k,
                            std::vector<llama_token_data> & out) {
    float z[COMBINE_BLOCK], zl[COMBINE_BLOCK];
    float large_best = -INFINITY;
    int32_t large_top = -1;
    size_t next_excluded = 0;
    top_k_blocks(n_shared, k, out, [&](int32_t i0, int32_t m) {
        const float * l = combine_block(large, pair_logits, alphas, n_pairs, i0, m, excluded_ids, next_excluded, z, zl);
        first_max_step(l, i0, m, &large_best, &large_top);
        return (const float *) z;
    });
    return large_top;
}

void rast_top_k_row(const float * row, const float * add, int32_t n, const std::vector<int32_t> & excluded_ids,
                    int32_t k, std::vector<llama_token_data> & out) {
    float z[COMBINE_BLOCK];
    size_t next_excluded = 0;
    top_k_blocks(n, k, out, [&](int32_t i0, int32_t m) {
        const bool excludes = next_excluded < excluded_ids.size() && excluded_ids[next_excluded] < i0 + m;
        if (add) {
            for (int32_t j = 0; j < m; ++j) {
                float logit = row[i0 + j];
                logit += add[i0 + j];
                z[j] = logit;
            }
        } else if (!excludes) {
            return row + i0;
        } else {
            std::memcpy(z, row + i0, m * sizeof(float));
        }
        for (; next_excluded < excluded_ids.size() && excluded_ids[next_excluded] < i0 + m; ++next_excluded) {
            z[excluded_ids[next_excluded] - i0] = -INFINITY;
        }
        return (const float *) z;
    });
}
