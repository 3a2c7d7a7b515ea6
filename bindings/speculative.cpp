#include "speculative.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

using rast_clock = std::chrono::steady_clock;

static double seconds_since(rast_clock::time_point t0) {
    return std::chrono::duration<double>(rast_clock::now() - t0).count();
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

double rast_uniform(uint64_t seed, int64_t position, int32_t purpose) {
    const uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ (uint64_t) position) ^ (uint64_t) purpose);
    return (double) (h >> 11) * (1.0 / 9007199254740992.0);
}

enum { U_DRAFT = 0, U_ACCEPT = 1, U_RESIDUAL = 2, U_PLAIN = 3 };

rast_post_chain::rast_post_chain(const rast_chain_settings & s, int32_t n_vocab) : n_vocab_(n_vocab) {
    if (s.temp <= 0.0f) return;  // greedy: no chain
    one_pass_k_ = rast_one_pass_top_k(s.top_k, n_vocab);
    if (one_pass_k_ == 0) cur_.resize(n_vocab);
    llama_sampler_chain_params params = llama_sampler_chain_default_params();
    params.no_perf = true;
    chain_ = llama_sampler_chain_init(params);
    // the same links, in the same order, as the SamplerChain of non-speculative RAST (ext.cpp)
    auto add_truncation = [&]() {
        if (s.top_k > 0)    llama_sampler_chain_add(chain_, llama_sampler_init_top_k(s.top_k));
        if (s.top_p < 1.0f) llama_sampler_chain_add(chain_, llama_sampler_init_top_p(s.top_p, 1));
        if (s.min_p > 0.0f) llama_sampler_chain_add(chain_, llama_sampler_init_min_p(s.min_p, 1));
    };
    if (s.reference) {
        if (s.temp != 1.0f) llama_sampler_chain_add(chain_, llama_sampler_init_temp(s.temp));
        add_truncation();
    } else {
        add_truncation();
        if (s.temp != 1.0f) llama_sampler_chain_add(chain_, llama_sampler_init_temp(s.temp));
    }
}

rast_post_chain::~rast_post_chain() {
    if (chain_) llama_sampler_free(chain_);
}

float rast_post_chain::apply(const float * row, const float * add, int32_t n_row, const std::vector<int32_t> & excluded,
                             float * logits_out, float * probs, std::vector<int32_t> & support) {
    if (!chain_) throw std::logic_error("rast_post_chain::apply is for sampling (temp > 0)");
    if (one_pass_k_ > 0) {
        rast_top_k_row(row, add, n_row, excluded, one_pass_k_, cur_);
    } else {
        for (int32_t id = 0; id < n_row; ++id) {
            float logit = row[id];
            if (add) logit += add[id];
            cur_[id] = {id, logit, 0.0f};
        }
        for (int32_t id : excluded) cur_[id].logit = -INFINITY;
        for (int32_t id = n_row; id < n_vocab_; ++id) cur_[id] = {id, -INFINITY, 0.0f};
    }
    llama_token_data_array arr = {cur_.data(), cur_.size(), -1, false};
    llama_sampler_apply(chain_, &arr);
    for (int32_t id : support) probs[id] = 0.0f;  // the rest of probs is zero already
    support.clear();
    float max_l = -INFINITY;
    for (size_t i = 0; i < arr.size; ++i) max_l = std::max(max_l, arr.data[i].logit);
    double sum = 0.0;
    for (size_t i = 0; i < arr.size; ++i) {
        const float e = std::isfinite(arr.data[i].logit) ? std::exp(arr.data[i].logit - max_l) : 0.0f;
        probs[arr.data[i].id] = e;
        sum += e;
    }
    const float inv = (float) (1.0 / sum);
    float top = 0.0f;
    for (size_t i = 0; i < arr.size; ++i) {
        float & p = probs[arr.data[i].id];
        p *= inv;
        top = std::max(top, p);
        if (p > 0.0f) support.push_back(arr.data[i].id);
    }
    std::sort(support.begin(), support.end());
    if (logits_out) {
        std::fill(logits_out, logits_out + n_vocab_, -INFINITY);
        for (size_t i = 0; i < arr.size; ++i) logits_out[arr.data[i].id] = arr.data[i].logit;
    }
    return top;
}

// Vocabulary rows are walked in blocks small enough to stay in L1 between the passes over them.
static constexpr int32_t ROW_BLOCK = 1024;

static const uint32_t NEG_INF_BITS = 0xff800000u;

// dst[i] = src[i] where mask[i] is all ones, -inf where it is 0: bit operations, which vectorise
// (a float select does not, under the default -ftrapping-math).
static void masked_copy(const float * src, const uint32_t * mask, float * dst, int32_t n) {
    for (int32_t i = 0; i < n; ++i) {
        uint32_t bits;
        std::memcpy(&bits, src + i, sizeof bits);
        bits = (bits & mask[i]) | (NEG_INF_BITS & ~mask[i]);
        std::memcpy(dst + i, &bits, sizeof bits);
    }
}

// Folds block [start, start + n) of a row into the running first argmax (best, *best_v).
static void argmax_step(const float * zb, int32_t start, int32_t n, int32_t * best, float * best_v) {
    const float m = rast_block_max(zb, n);
    if (*best >= 0 && !(m > *best_v)) return;
    int32_t j = 0;
    while (j + 1 < n && !(zb[j] == m)) ++j;
    *best = start + j;
    *best_v = m;
}

int32_t rast_argmax(const float * z, int32_t n) {
    int32_t best = -1;
    float best_v = -INFINITY;
    for (int32_t start = 0; start < n; start += ROW_BLOCK) {
        argmax_step(z + start, start, std::min(ROW_BLOCK, n - start), &best, &best_v);
    }
    return std::max(best, 0);
}

static rast_ids support(const std::vector<int32_t> & ids) { return {(int32_t) ids.size(), ids.data()}; }

int32_t rast_draw(const float * probs, rast_ids ids, double u) {
    double sum = 0.0;
    for (int32_t j = 0; j < ids.n; ++j) sum += probs[ids[j]];
    const double target = u * sum;
    double run = 0.0;
    int32_t last = -1;
    for (int32_t j = 0; j < ids.n; ++j) {
        const int32_t i = ids[j];
        if (probs[i] <= 0.0f) continue;
        run += probs[i];
        last = i;
        if (run > target) return i;
    }
    return last;  // rounding at the very end
}

int32_t rast_accept_or_resample(const float * p, const float * q, rast_ids p_ids, int32_t d, double u_accept,
                                double u_residual, bool wrong_residual, bool * accepted) {
    if (u_accept * (double) q[d] < (double) p[d]) {  // u < p(d)/q(d), without dividing
        *accepted = true;
        return d;
    }
    *accepted = false;
    const double v = u_residual;
    // residual max(0, p - q) over the full vocabulary (0 outside p's support, the ids walked), drawn
    // in two passes without a buffer
    double sum = 0.0;
    for (int32_t j = 0; j < p_ids.n; ++j) {
        const int32_t i = p_ids[j];
        sum += wrong_residual ? p[i] : std::max(0.0f, p[i] - q[i]);
    }
    if (!(sum > 0.0)) {  // p == q up to rounding: rejection had probability ~0; p is the residual's limit
        return rast_draw(p, p_ids, v);
    }
    const double target = v * sum;
    double run = 0.0;
    int32_t last = -1;
    for (int32_t j = 0; j < p_ids.n; ++j) {
        const int32_t i = p_ids[j];
        const double r = wrong_residual ? p[i] : std::max(0.0f, p[i] - q[i]);
        if (r <= 0.0) continue;
        run += r;
        last = i;
        if (run > target) return i;
    }
    return last;
}

rast_speculator::rast_speculator(llama_context * ctx_large, std::vector<rast_pair> pairs, int32_t n_shared,
                                 std::vector<uint8_t> excluded, const rast_chain_settings & settings, uint64_t seed,
                                 rast_draft_kind kind, llama_context * ctx_draft, int32_t n_batch_max,
                                 bool eager_draft, bool predraft)
    : ctx_large_(ctx_large), pairs_(std::move(pairs)),
      n_vocab_(llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx_large)))), n_shared_(n_shared),
      settings_(settings), chain_p_(settings, n_vocab_), chain_q_(settings, n_vocab_), seed_(seed), kind_(kind),
      ctx_draft_(ctx_draft), n_batch_max_(n_batch_max), eager_draft_(eager_draft), predraft_(predraft) {
    if (kind_ == RAST_DRAFT_TUNED && pairs_.empty()) throw std::invalid_argument("drafting with the tuned model needs a pair");
    if (kind_ == RAST_DRAFT_MODEL && !ctx_draft_) throw std::invalid_argument("no drafter context");
    if (kind_ == RAST_DRAFT_TUNED) ctx_draft_ = pairs_[0].ctx_tuned;
    if (ctx_draft_) {  // the ids of a drafter row that RAST reads
        n_draft_read_ = std::min(n_shared_, llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx_draft_))));
    }
    if (kind_ == RAST_DRAFT_NGRAM) eager_draft_ = false;
    predraft_ = predraft_ && eager_draft_;  // only where the drafter runs beside the verify
    keep_rows_ = kind_ == RAST_DRAFT_TUNED || settings_.temp > 0.0f;
    allowed_.assign(n_vocab_, 0);
    mask_.assign(n_shared_, 0u);
    for (int32_t id = 0; id < n_shared_; ++id) {
        allowed_[id] = id < (int32_t) excluded.size() ? !excluded[id] : 1;
        if (allowed_[id]) mask_[id] = ~0u;
        else excluded_ids_.push_back(id);
    }
    verifiers_ = {ctx_large_};
    for (size_t p = 0; p < pairs_.size(); ++p) {
        if (!(kind_ == RAST_DRAFT_TUNED && p == 0)) verifiers_.push_back(pairs_[p].ctx_tuned);
        verifiers_.push_back(pairs_[p].ctx_base);
    }
    batch_ = llama_batch_init(n_batch_max_, 0, 1);
    batch_one_ = llama_batch_init(1, 0, 1);
    z_.resize(n_vocab_);
    post_.resize(n_vocab_);
    p_.resize(n_vocab_);
}

rast_speculator::~rast_speculator() {
    llama_batch_free(batch_);
    llama_batch_free(batch_one_);
}

void rast_speculator::start(const std::vector<llama_token> & history) {
    if (history.empty()) throw std::invalid_argument("speculative decoding needs at least one token to start from");
    history_.assign(history.begin(), history.end() - 1);
    id_last_ = history.back();
    logits_pos_ = -1;
    ahead_token_ = -1;
    carry_ = false;
}

static void batch_set(llama_batch & b, int32_t i, llama_token token, llama_pos pos, bool logits) {
    b.token[i] = token;
    b.pos[i] = pos;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = logits;
}

void rast_speculator::decode_drafter(llama_batch & batch) {
    decode(ctx_draft_, batch);
    ++n_draft_decodes_;
    logits_pos_ = batch.pos[batch.n_tokens - 1];
}

void rast_speculator::queue_drafter_token(llama_token token, llama_pos pos) {
    batch_one_.n_tokens = 1;
    batch_set(batch_one_, 0, token, pos, true);
    decode(ctx_draft_, batch_one_);
    logits_pos_ = pos;
}

void rast_speculator::keep_drafter_row(int32_t i, const float * row) {
    std::memcpy(rows_.data() + (size_t) i * n_vocab_, row, sizeof(float) * n_draft_read_);
    n_rows_ = i + 1;
}

int32_t rast_speculator::decode(llama_context * ctx, llama_batch & batch) {
    const int32_t rc = llama_decode(ctx, batch);
    if (rc != 0) {
        throw std::runtime_error(rc == 1 ? "the context is full (no KV slot for the speculative batch)"
                                         : "llama_decode failed (code " + std::to_string(rc) + ")");
    }
    return rc;
}

// The drafter's choice from its logits row j (the draft for position n + 1 + j); false when its top
// probability is below p_min (the draft ends). Greedy: the masked argmax in one pass, the top
// probability (only for p_min) in a second pass that skips ids more than 30 nats below the top.
bool rast_speculator::next_draft(const float * row, int32_t j, float p_min, llama_token * d) {
    const int32_t n = (int32_t) history_.size();
    float * q = q_.data() + (size_t) j * n_vocab_;
    if (settings_.temp <= 0.0f) {
        float zb[ROW_BLOCK];
        int32_t best = -1;
        float best_v = -INFINITY;
        for (int32_t start = 0; start < n_shared_; start += ROW_BLOCK) {
            const int32_t len = std::min(ROW_BLOCK, n_shared_ - start);
            masked_copy(row + start, mask_.data() + start, zb, len);
            argmax_step(zb, start, len, &best, &best_v);
        }
        *d = std::max(best, 0);
        if (p_min <= 0.0f) return true;
        double sum = 0.0;
        const float floor = best_v - 30.0f;
        for (int32_t id = 0; id < n_shared_; ++id) {
            if (mask_[id] && row[id] > floor) sum += std::exp(row[id] - best_v);
        }
        return (float) (1.0 / sum) >= p_min;
    }
    const float top = chain_q_.apply(row, nullptr, n_shared_, excluded_ids_, nullptr, q, q_ids_[j]);
    *d = rast_draw(q, support(q_ids_[j]), rast_uniform(seed_, (int64_t) n + 1 + j, U_DRAFT));
    return top >= p_min;
}

int32_t rast_speculator::draft_with_model(llama_context * ctx, int32_t k_max, float p_min, bool keep_rows) {
    const int32_t n = (int32_t) history_.size();
    llama_memory_t mem = llama_get_memory(ctx);
    int32_t held = llama_memory_seq_pos_max(mem, 0) + 1;
    // a pre-draft hit: the drafter already holds id_last at n, and its logits are row 0
    const bool carried = carried_ = carry_ && held == n + 1 && logits_pos_ == n;
    carry_ = false;
    if (carried) {
        held = n + 1;
    } else if (held > n) {
        llama_memory_seq_rm(mem, 0, n, -1);
        held = n;
    }
    // catch up with the history (after a full acceptance a separate drafter lacks the last draft),
    // then id_last: logits for the last one only; eager with nothing to draft, id_last waits for the
    // verify round
    const bool defer_last = eager_draft_ && k_max == 0 && !carried;
    const int32_t last = defer_last ? n - 1 : n;
    for (int32_t start = held; start <= last; start += n_batch_max_) {
        const int32_t end = std::min(last + 1, start + n_batch_max_);
        batch_.n_tokens = end - start;
        for (int32_t pos = start; pos < end; ++pos) {
            batch_set(batch_, pos - start, pos < n ? history_[pos] : id_last_, pos, pos == n);
        }
        if (end > n) {
            decode_drafter(batch_);  // the chunk with id_last, whose logits are row 0
        } else {
            decode(ctx, batch_);     // catching up on the history: no logits
        }
    }
    if (defer_last) {
        pending_token_ = id_last_;
        pending_row_ = 0;
        return 0;
    }
    for (int32_t j = 0;; ++j) {
        const float * row = llama_get_logits_ith(ctx, -1);
        if (keep_rows) {
            keep_drafter_row(j, row);
        }
        if (j >= k_max) break;
        llama_token d;
        if (!next_draft(row, j, p_min, &d)) break;
        drafts_.push_back(d);
        if ((int32_t) drafts_.size() >= k_max) {
            if (eager_draft_) {  // decoded in the verify round
                pending_token_ = d;
                pending_row_ = j + 1;
            }
            break;
        }
        batch_.n_tokens = 1;
        batch_set(batch_, 0, d, n + j + 1, true);
        decode_drafter(batch_);
    }
    return (int32_t) drafts_.size();
}

int32_t rast_speculator::draft_ngram(int32_t k_max, int32_t ngram_min, int32_t ngram_max) {
    // prompt lookup: the longest suffix (ngram_max down to ngram_min tokens) of history + id_last
    // that occurred before; the tokens that followed its latest earlier occurrence are the drafts
    std::vector<llama_token> seq(history_);
    seq.push_back(id_last_);
    const int32_t len = (int32_t) seq.size();
    for (int32_t size = std::min(ngram_max, len - 1); size >= std::max(1, ngram_min); --size) {
        const llama_token * suffix = seq.data() + len - size;
        for (int32_t end = len - 1; end >= size; --end) {  // candidate match seq[end-size, end)
            if (std::equal(suffix, suffix + size, seq.data() + end - size)) {
                for (int32_t i = end; i < len && (int32_t) drafts_.size() < k_max; ++i) drafts_.push_back(seq[i]);
                break;
            }
        }
        if (!drafts_.empty()) break;
    }
    const bool greedy = settings_.temp <= 0.0f;
    for (size_t j = 0; !greedy && j < drafts_.size(); ++j) {  // q: one-hot on the draft
        float * q = q_.data() + j * n_vocab_;
        for (int32_t id : q_ids_[j]) q[id] = 0.0f;  // the rest of the row is zero already
        q[drafts_[j]] = 1.0f;
        q_ids_[j].assign(1, drafts_[j]);
    }
    return (int32_t) drafts_.size();
}

const float * rast_speculator::tuned_row(size_t pair, int32_t i) {
    if (!(kind_ == RAST_DRAFT_TUNED && pair == 0)) {
        return llama_get_logits_ith(pairs_[pair].ctx_tuned, i);
    }
    return drafter_row(i);
}

const float * rast_speculator::drafter_row(int32_t i) {
    if (i < n_rows_) return rows_.data() + (size_t) i * n_vocab_;
    if (i == eager_row_) return llama_get_logits_ith(ctx_draft_, -1);  // decoded in the verify round
    // every draft was accepted: the drafter has not yet decoded the last one; its row is the next one
    const auto t0 = rast_clock::now();
    const int32_t k = (int32_t) drafts_.size();
    batch_.n_tokens = 1;
    batch_set(batch_, 0, drafts_[k - 1], (llama_pos) history_.size() + k, true);
    decode_drafter(batch_);
    keep_drafter_row(i, llama_get_logits_ith(ctx_draft_, -1));
    lazy_seconds_ += seconds_since(t0);
    return rows_.data() + (size_t) i * n_vocab_;
}

// The pairs' delta at verify row i: sum over pairs of alpha (t - b), the delta sampler's
// arithmetic expression for expression (greedy output must match it bit for bit).
const float * rast_speculator::delta_row(int32_t i) {
    float * d = delta_.data() + (size_t) i * n_vocab_;
    if (delta_ready_[i]) return d;
    if (pairs_.empty()) std::fill(d, d + n_shared_, 0.0f);
    for (size_t k = 0; k < pairs_.size(); ++k) {
        const float alpha = pairs_[k].alpha;
        const float * t = tuned_row(k, i);
        const float * b = llama_get_logits_ith(pairs_[k].ctx_base, i);
        if (k == 0) {
            for (int32_t id = 0; id < n_shared_; ++id) d[id] = alpha * (t[id] - b[id]);
        } else {
            for (int32_t id = 0; id < n_shared_; ++id) d[id] += alpha * (t[id] - b[id]);
        }
    }
    delta_ready_[i] = 1;
    return d;
}

int32_t rast_speculator::rast_row(int32_t i, float * z) {
    const float * d = delta_row(i);
    const float * zl = llama_get_logits_ith(ctx_large_, i);
    int32_t best = -1;
    float best_v = -INFINITY;
    float block[ROW_BLOCK];  // where the row is not kept
    for (int32_t start = 0; start < n_shared_; start += ROW_BLOCK) {
        const int32_t len = std::min(ROW_BLOCK, n_shared_ - start);
        float * zb = z ? z + start : block;
        for (int32_t j = 0; j < len; ++j) {
            float logit = zl[start + j];
            logit += d[start + j];
            zb[j] = logit;
        }
        masked_copy(zb, mask_.data() + start, zb, len);
        argmax_step(zb, start, len, &best, &best_v);
    }
    if (z) std::fill(z + n_shared_, z + n_vocab_, -INFINITY);
    return std::max(best, 0);
}

void rast_speculator::emit_stats(const float * zl, const float * z_rast, const float * post_logits, llama_token token) {
    if (record) recorded.emplace_back(post_logits, post_logits + n_vocab_);
    if (!track_delta) return;
    llama_token large_top = -1;
    float max_large = -INFINITY, max_rast = -INFINITY;
    for (int32_t id = 0; id < n_vocab_; ++id) {
        if (!allowed_[id]) continue;
        if (zl[id] > max_large) { max_large = zl[id]; large_top = id; }
        max_rast = std::max(max_rast, z_rast[id]);
    }
    double sum_large = 0.0, sum_rast = 0.0;
    for (int32_t id = 0; id < n_vocab_; ++id) {
        if (!allowed_[id]) continue;
        sum_large += std::exp((double) zl[id] - max_large);
        sum_rast  += std::exp((double) z_rast[id] - max_rast);
    }
    if (token < 0 || token >= n_vocab_ || !allowed_[token]) {
        delta_stats.push_back({large_top, -INFINITY, -INFINITY});
        return;
    }
    delta_stats.push_back({large_top, (float) (zl[token] - max_large - std::log(sum_large)),
                           (float) (z_rast[token] - max_rast - std::log(sum_rast))});
}

// The drafter's proposal after its row k (the draft the bonus token is decided from: its argmax, or
// its draw keyed by the position), once that row is there without another decode; false if not.
bool rast_speculator::propose_bonus(int32_t n, int32_t k) {
    if (bonus_draft_ >= 0) return true;
    if (kind_ == RAST_DRAFT_NGRAM) return false;
    const float * row = nullptr;
    if (logits_pos_ == n + k) {
        row = llama_get_logits_ith(ctx_draft_, -1);  // waits for the drafter's stream only
        if (keep_rows_ && n_rows_ == k) keep_drafter_row(k, row);  // row k stays readable after the next decode
    } else if (k < n_rows_) {
        row = rows_.data() + (size_t) k * n_vocab_;
    }
    if (!row) return false;
    next_draft(row, k, 0.0f, &bonus_draft_);
    return true;
}

// In the verify round: the drafter's proposal after its row k, decoded at n + k + 1 on the
// drafter's stream while the large model verifies.
void rast_speculator::predraft(int32_t n, int32_t k) {
    if (!propose_bonus(n, k) || n + k + 1 >= (int32_t) llama_n_ctx(ctx_draft_)) return;
    if (logits_pos_ > n + k) llama_memory_seq_rm(llama_get_memory(ctx_draft_), 0, n + k + 1, -1);  // dropped drafts
    queue_drafter_token(bonus_draft_, n + k + 1);
    ahead_token_ = bonus_draft_;
}

rast_cycle_result rast_speculator::cycle(int32_t k_max, float p_min, int32_t n_min, int32_t ngram_min,
                                         int32_t ngram_max, bool predraft_now) {
    if (id_last_ < 0) throw std::runtime_error("call start() before cycle()");
    k_max = std::max(0, std::min(k_max, n_batch_max_ - 1));
    rast_cycle_result res;
    recorded.clear();
    delta_stats.clear();
    drafts_.clear();
    n_rows_ = 0;
    pending_row_ = eager_row_ = -1;
    lazy_seconds_ = 0.0;
    n_draft_decodes_ = 0;
    ahead_token_ = bonus_draft_ = -1;
    carried_ = false;
    const size_t need = (size_t) (k_max + 1) * n_vocab_;
    if (q_.size() < need) q_.resize(need);
    if ((int32_t) q_ids_.size() < k_max + 1) q_ids_.resize(k_max + 1);
    if (delta_.size() < need) delta_.resize(need);
    if ((int32_t) delta_ready_.size() < k_max + 1) delta_ready_.resize(k_max + 1);
    if (kind_ != RAST_DRAFT_NGRAM && rows_.size() < need) rows_.resize(need);
    const int32_t n = (int32_t) history_.size();

    auto t0 = rast_clock::now();
    int32_t k = 0;
    if (kind_ == RAST_DRAFT_NGRAM) {
        k = draft_ngram(k_max, ngram_min, ngram_max);
    } else {
        k = draft_with_model(ctx_draft_, k_max, p_min, kind_ == RAST_DRAFT_TUNED || settings_.temp > 0.0f);
    }
    if (k < n_min) {
        drafts_.clear();
        if (k > 0) pending_row_ = -1;  // the row of a dropped draft is not needed
        k = 0;
    }
    res.t_draft = seconds_since(t0);

    t0 = rast_clock::now();
    batch_.n_tokens = k + 1;
    batch_set(batch_, 0, id_last_, n, true);
    for (int32_t j = 0; j < k; ++j) batch_set(batch_, j + 1, drafts_[j], n + j + 1, true);
    for (auto * ctx : verifiers_) decode(ctx, batch_);  // the large model's first
    if (pending_row_ >= 0) {
        queue_drafter_token(pending_token_, n + pending_row_);
        eager_row_ = pending_row_;
        pending_row_ = -1;
    }
    if (predraft_ && predraft_now) predraft(n, k);
    propose_bonus(n, k);  // where the drafter's row k is there, while the large model computes
    // while the large model computes (on a GPU): the pairs' delta of every row whose small-model
    // logits are there without another decode
    std::fill(delta_ready_.begin(), delta_ready_.begin() + k + 1, 0);
    for (int32_t i = 0; i <= k; ++i) {
        if (kind_ != RAST_DRAFT_TUNED || i < n_rows_ || i == eager_row_) delta_row(i);
    }
    llama_synchronize(ctx_large_);
    res.t_verify = seconds_since(t0);

    const bool greedy = settings_.temp <= 0.0f;
    // the whole RAST row is written out only for the stats (and a greedy record); else the argmax is
    // taken block by block from the large row and the delta, and the chain reads those two itself
    const bool keep_z = track_delta || (greedy && record);
    int32_t m = 0;
    for (int32_t i = 0; i <= k; ++i) {
        const float * zl = llama_get_logits_ith(ctx_large_, i);
        llama_token token;
        bool accepted = false;
        if (greedy) {
            token = rast_row(i, keep_z ? z_.data() : nullptr);
            accepted = i < k && drafts_[i] == token;
            emit_stats(zl, z_.data(), z_.data(), token);
            if (i == k && bonus_draft_ >= 0) res.bonus_accepted = bonus_draft_ == token;  // would it have been accepted?
        } else {
            if (keep_z) rast_row(i, z_.data());  // for the delta stats
            chain_p_.apply(zl, delta_row(i), n_shared_, excluded_ids_, record ? post_.data() : nullptr, p_.data(),
                           p_ids_);
            const int64_t pos = (int64_t) n + 1 + i;  // index of the token this row decides
            const double u_accept = rast_uniform(seed_, pos, U_ACCEPT), u_residual = rast_uniform(seed_, pos, U_RESIDUAL);
            if (i < k) {
                token = rast_accept_or_resample(p_.data(), q_.data() + (size_t) i * n_vocab_, support(p_ids_), drafts_[i],
                                                u_accept, u_residual, wrong_residual, &accepted);
            } else if (kind_ != RAST_DRAFT_NGRAM) {
                // the draft the drafter would propose here, decided like any draft (exact for any q)
                if (bonus_draft_ < 0) next_draft(drafter_row(i), i, 0.0f, &bonus_draft_);  // a CPU drafter's lazy row
                bool bonus_ok;
                token = rast_accept_or_resample(p_.data(), q_.data() + (size_t) i * n_vocab_, support(p_ids_),
                                                bonus_draft_, u_accept, u_residual, wrong_residual, &bonus_ok);
                res.bonus_accepted = bonus_ok;
            } else {
                token = rast_draw(p_.data(), support(p_ids_), rast_uniform(seed_, pos, U_PLAIN));
            }
            emit_stats(zl, z_.data(), post_.data(), token);
        }
        if (forced_accept >= 0 && i < k) {
            accepted = i < forced_accept;
            if (accepted) token = drafts_[i];
        }
        if (forced_accept >= 0 && i == k && ahead_token_ >= 0) {
            token = forced_hit ? ahead_token_ : (ahead_token_ == 0 ? 1 : 0);  // a hit, or surely not one
        }
        res.tokens.push_back(token);
        if (!accepted) break;
        ++m;
    }
    res.t_draft += lazy_seconds_;
    res.carried = carried_;
    res.n_draft_decodes = n_draft_decodes_;  // a lazy decode after the verify counts too
    res.n_drafted = k;
    res.n_accepted = m;
    // the bonus token is the pre-draft the drafter decoded at n + k + 1: it keeps that position
    res.hit = carry_ = ahead_token_ >= 0 && m == k && res.tokens.back() == ahead_token_;

    // every context keeps exactly history + id_last + the accepted drafts (the drafter, on a hit, + the bonus)
    const llama_pos keep = n + m + 1;
    for (auto * ctx : verifiers_) llama_memory_seq_rm(llama_get_memory(ctx), 0, keep, -1);
    if (kind_ != RAST_DRAFT_NGRAM) llama_memory_seq_rm(llama_get_memory(ctx_draft_), 0, carry_ ? keep + 1 : keep, -1);
    history_.push_back(id_last_);
    history_.insert(history_.end(), drafts_.begin(), drafts_.begin() + m);
    id_last_ = res.tokens.back();
    return res;
}
