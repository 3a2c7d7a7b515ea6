#include "step_sampler.h"
#include "delta_sampler.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

// ---- RowPool ----------------------------------------------------------------------------------

RowPool::RowPool(size_t n_workers) {
    for (size_t w = 1; w < std::max<size_t>(n_workers, 1); ++w) {
        threads_.emplace_back([this, w] { work(w); });
    }
}

RowPool::~RowPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    start_.notify_all();
    for (auto & t : threads_) t.join();
}

void RowPool::drain(size_t worker) {
    for (;;) {
        const size_t item = next_.fetch_add(1);
        if (item >= n_items_) return;
        try {
            (*fn_)(item, worker);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = std::current_exception();
            next_.store(n_items_);  // the others stop taking rows
            return;
        }
    }
}

void RowPool::work(size_t worker) {
    uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            start_.wait(lock, [&] { return stopping_ || round_ != seen; });
            if (stopping_) return;
            seen = round_;
        }
        drain(worker);
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
    }
}

void RowPool::run(size_t n_items, const std::function<void(size_t, size_t)> & fn, bool spread_rows) {
    error_ = nullptr;
    fn_ = &fn;
    n_items_ = n_items;
    next_.store(0);
    const bool spread = spread_rows && n_items > 1 && !threads_.empty();
    if (spread) {
        std::lock_guard<std::mutex> lock(mutex_);
        pending_ = threads_.size();
        ++round_;
    }
    if (spread) start_.notify_all();
    drain(0);
    if (spread) {
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return pending_ == 0; });
    }
    fn_ = nullptr;
    if (error_) {
        std::exception_ptr e = error_;
        error_ = nullptr;
        std::rethrow_exception(e);
    }
}

// ---- StepSampler ------------------------------------------------------------------------------

rast_step_seq::~rast_step_seq() {
    if (trunc) llama_sampler_free(trunc);
    if (dist) llama_sampler_free(dist);
}

StepSampler::StepSampler(llama_context * ctx_large, std::vector<std::pair<llama_context *, llama_context *>> pairs,
                         int32_t n_shared, size_t n_threads)
    : ctx_large_(ctx_large), pairs_(std::move(pairs)), n_shared_(n_shared), pool_(n_threads) {
    const llama_vocab * vocab = llama_model_get_vocab(llama_get_model(ctx_large_));
    n_vocab_ = llama_vocab_n_tokens(vocab);
    if (n_shared_ <= 0 || n_shared_ > n_vocab_) {
        throw std::invalid_argument("n_shared must be in [1, n_vocab of the large model]");
    }
    excluded_.assign(n_shared_, 0);
    rast_vocab_mark_unused(vocab, n_shared_, excluded_);
    for (const auto & [tuned, base] : pairs_) {
        rast_vocab_mark_unused(llama_model_get_vocab(llama_get_model(tuned)), n_shared_, excluded_);
        rast_vocab_mark_unused(llama_model_get_vocab(llama_get_model(base)), n_shared_, excluded_);
    }
    excluded_.resize(n_shared_);
    excluded_ids_ = rast_excluded_ids(excluded_);
    scratch_.resize(pool_.size());
}

int32_t StepSampler::open(float temp, int32_t top_k, float top_p, float min_p, uint32_t seed,
                          const std::string & order, std::vector<float> alphas, int32_t n_logprobs) {
    if (alphas.size() != pairs_.size()) throw std::invalid_argument("give one alpha per pair");
    if (order != "llama" && order != "reference") throw std::invalid_argument("order must be 'llama' or 'reference'");
    auto s = std::make_unique<rast_step_seq>();
    s->alphas = std::move(alphas);
    s->n_logprobs = n_logprobs;
    s->greedy = temp <= 0.0f;
    s->top_k = rast_one_pass_top_k(top_k, n_shared_);
    if (!s->greedy) {  // the links and order of SamplerChain, without the delta (added here) and the probe
        llama_sampler_chain_params params = llama_sampler_chain_default_params();
        params.no_perf = true;
        s->trunc = llama_sampler_chain_init(params);
        auto add_truncation = [&]() {
            if (top_k > 0)    llama_sampler_chain_add(s->trunc, llama_sampler_init_top_k(top_k));
            if (top_p < 1.0f) llama_sampler_chain_add(s->trunc, llama_sampler_init_top_p(top_p, 1));
            if (min_p > 0.0f) llama_sampler_chain_add(s->trunc, llama_sampler_init_min_p(min_p, 1));
        };
        if (order == "reference") {
            if (temp != 1.0f) llama_sampler_chain_add(s->trunc, llama_sampler_init_temp(temp));
            add_truncation();
        } else {
            add_truncation();
            if (temp != 1.0f) llama_sampler_chain_add(s->trunc, llama_sampler_init_temp(temp));
        }
        s->dist = llama_sampler_init_dist(seed);
    }
    if (!free_.empty()) {
        const int32_t handle = free_.back();
        free_.pop_back();
        seqs_[handle] = std::move(s);
        return handle;
    }
    seqs_.push_back(std::move(s));
    return (int32_t) seqs_.size() - 1;
}

rast_step_seq & StepSampler::seq(int32_t handle) const {
    if (handle < 0 || (size_t) handle >= seqs_.size() || !seqs_[handle]) {
        throw std::out_of_range("no open sequence with that handle");
    }
    return *seqs_[handle];
}

void StepSampler::close(int32_t handle) {
    seq(handle);
    seqs_[handle].reset();
    free_.push_back(handle);
}

int32_t StepSampler::n_logprobs(int32_t handle) const { return seq(handle).n_logprobs; }

size_t StepSampler::n_open() const { return seqs_.size() - free_.size(); }

void StepSampler::sample(const std::vector<int32_t> & rows, const std::vector<int32_t> & handles,
                         const rast_step_out & out) {
    if (rows.size() != handles.size()) throw std::invalid_argument("rows and handles differ in length");
    for (int32_t h : handles) seq(h);  // every handle valid before any work
    const size_t n = rows.size();
    const size_t n_ctx = 1 + 2 * pairs_.size();
    row_logits_.assign(n * n_ctx, nullptr);
    // on this thread: llama_get_logits_ith waits for each context's queued work, once per context
    for (size_t i = 0; i < n; ++i) {
        const float * large = llama_get_logits_ith(ctx_large_, rows[i]);
        if (!large) throw std::out_of_range("no logits at output row " + std::to_string(rows[i]));
        row_logits_[i * n_ctx] = large;
        for (size_t k = 0; k < pairs_.size(); ++k) {
            const float * t = llama_get_logits_ith(pairs_[k].first, rows[i]);
            const float * b = llama_get_logits_ith(pairs_[k].second, rows[i]);
            if (!t || !b) throw std::out_of_range("no logits of a small model at output row " + std::to_string(rows[i]));
            row_logits_[i * n_ctx + 1 + 2 * k] = t;
            row_logits_[i * n_ctx + 2 + 2 * k] = b;
        }
    }
    // waking the workers costs tens of microseconds: only worth it for a few rows of a large vocabulary
    const bool spread = (double) n * (double) n_ctx * (double) n_shared_ >= 1.0e6;
    pool_.run(n, [&](size_t i, size_t worker) { sample_row(i, worker, handles, out); }, spread);
}

namespace {

// The k best (id, value) kept in descending order by value (ties: the lower id first).
struct TopK {
    explicit TopK(int32_t k) : k(k) { items.reserve(k + 1); }
    void push(int32_t id, float value) {
        if (k <= 0) return;
        if ((int32_t) items.size() == k && !(value > items.back().second)) return;
        auto at = std::upper_bound(items.begin(), items.end(), value,
                                   [](float v, const std::pair<int32_t, float> & e) { return v > e.second; });
        items.insert(at, {id, value});
        if ((int32_t) items.size() > k) items.pop_back();
    }
    int32_t k;
    std::vector<std::pair<int32_t, float>> items;
};

}  // namespace

void StepSampler::sample_row(size_t i, size_t worker, const std::vector<int32_t> & handles, const rast_step_out & out) {
    rast_step_seq & s = *seqs_[handles[i]];
    const size_t n_pairs = pairs_.size();
    const size_t n_ctx = 1 + 2 * n_pairs;
    const float * const * logits = &row_logits_[i * n_ctx];
    const float * large = logits[0];
    const uint8_t * excluded = excluded_.data();
    const float * alphas = s.alphas.data();
    // the same float operations as rast_delta_apply, so both paths choose alike
    auto combined = [&](int32_t id) -> float {
        if (n_pairs == 1) return large[id] + alphas[0] * (logits[1][id] - logits[2][id]);
        float delta = 0.0f;
        for (size_t k = 0; k < n_pairs; ++k) delta += alphas[k] * (logits[1 + 2 * k][id] - logits[2 + 2 * k][id]);
        return large[id] + delta;
    };
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    const float NaN = std::numeric_limits<float>::quiet_NaN();

    int32_t large_top = -1;
    float large_best = NEG_INF;
    int32_t token = -1;
    double logprob = NaN;
    TopK top(std::max(0, std::min(s.n_logprobs, out.k_max)));

    if (s.greedy) {
        const rast_greedy_choice choice =
            rast_greedy_argmax(large, logits + 1, alphas, n_pairs, n_shared_, excluded_ids_);
        const float best = choice.best;
        token = choice.token;
        large_top = choice.large_top;
        if (token < 0) token = 0;  // nothing finite: llama.cpp's greedy takes the first candidate
        if (s.n_logprobs >= 0 && token < n_shared_ && std::isfinite(best)) {
            double sum = 0.0;
            for (int32_t id = 0; id < n_shared_; ++id) {
                if (excluded[id]) continue;
                const float z = combined(id);
                sum += std::exp((double) z - best);
                top.push(id, z);
            }
            const double log_sum = std::log(sum);
            logprob = -log_sum;  // the chosen token is the maximum
            for (auto & e : top.items) e.second = (float) ((double) e.second - best - log_sum);
        }
    } else {
        std::vector<llama_token_data> & cur = scratch_[worker];
        if (s.top_k > 0) {
            large_top = rast_top_k_combined(large, logits + 1, alphas, n_pairs, n_shared_, excluded_ids_, s.top_k, cur);
        } else {
            cur.resize(n_vocab_);
            for (int32_t id = 0; id < n_vocab_; ++id) {
                float z = NEG_INF;
                if (id < n_shared_ && !excluded[id]) {
                    z = combined(id);
                    if (large[id] > large_best) { large_best = large[id]; large_top = id; }
                }
                cur[id] = {id, z, 0.0f};
            }
        }
        llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
        llama_sampler_apply(s.trunc, &cur_p);
        double max_z = NEG_INF, log_sum = 0.0;
        if (s.n_logprobs >= 0) {
            for (size_t j = 0; j < cur_p.size; ++j) max_z = std::max(max_z, (double) cur_p.data[j].logit);
            double sum = 0.0;
            for (size_t j = 0; j < cur_p.size; ++j) {
                if (std::isfinite(cur_p.data[j].logit)) sum += std::exp((double) cur_p.data[j].logit - max_z);
            }
            log_sum = std::log(sum);
        }
        llama_sampler_apply(s.dist, &cur_p);
        if (cur_p.selected < 0 || (size_t) cur_p.selected >= cur_p.size) {
            throw std::runtime_error("llama.cpp's sampler selected no candidate");
        }
        token = cur_p.data[cur_p.selected].id;
        llama_sampler_accept(s.trunc, token);
        llama_sampler_accept(s.dist, token);
        if (s.n_logprobs >= 0) {
            logprob = (double) cur_p.data[cur_p.selected].logit - max_z - log_sum;
            for (size_t j = 0; j < cur_p.size; ++j) {
                if (std::isfinite(cur_p.data[j].logit)) top.push(cur_p.data[j].id, cur_p.data[j].logit);
            }
            for (auto & e : top.items) e.second = (float) ((double) e.second - max_z - log_sum);
        }
    }

    out.tokens[i] = token;
    out.changed[i] = token != large_top;
    out.logprob[i] = (float) logprob;
    for (int32_t j = 0; j < out.k_max; ++j) {
        const bool has = j < (int32_t) top.items.size();
        out.top_ids[i * out.k_max + j] = has ? top.items[j].first : -1;
        out.top_lp[i * out.k_max + j] = has ? top.items[j].second : NaN;
    }
}

// ---- binding ----------------------------------------------------------------------------------

namespace nb = nanobind;

template <typename T> using Array1 = nb::ndarray<nb::numpy, T, nb::ndim<1>>;
template <typename T> using Array2 = nb::ndarray<nb::numpy, T, nb::ndim<2>>;
using Row = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

template <typename T> static std::pair<T *, nb::capsule> owned(size_t n) {
    T * data = new T[std::max<size_t>(n, 1)];
    return {data, nb::capsule(data, [](void * p) noexcept { delete[] (T *) p; })};
}

// The test hooks' rows, checked (a tuned and a base row per alpha, all at least n_shared wide);
// excluded_ids sorted in place.
static std::vector<const float *> hook_rows(const Row & large, const std::vector<Row> & pair_rows,
                                            const std::vector<float> & alphas, int32_t n_shared,
                                            std::vector<int32_t> & excluded_ids) {
    if (pair_rows.size() != 2 * alphas.size()) throw std::invalid_argument("give tuned and base per alpha");
    std::vector<const float *> rows;
    for (const auto & r : pair_rows) {
        if (r.shape(0) < (size_t) n_shared) throw std::invalid_argument("a row is shorter than n_shared");
        rows.push_back(r.data());
    }
    if (large.shape(0) < (size_t) n_shared) throw std::invalid_argument("a row is shorter than n_shared");
    std::sort(excluded_ids.begin(), excluded_ids.end());
    return rows;
}

static llama_context * ctx_from(uintptr_t addr) {
    if (addr == 0) throw std::invalid_argument("null llama handle");
    return reinterpret_cast<llama_context *>(addr);
}

void rast_register_step_sampler(nb::module_ & m) {
    nb::class_<StepSampler>(m, "StepSampler")
        .def("__init__",
             [](StepSampler * self, uintptr_t ctx_large, const std::vector<std::pair<uintptr_t, uintptr_t>> & pairs,
                int32_t n_shared, size_t n_threads) {
                 std::vector<std::pair<llama_context *, llama_context *>> contexts;
                 for (const auto & [t, b] : pairs) contexts.emplace_back(ctx_from(t), ctx_from(b));
                 new (self) StepSampler(ctx_from(ctx_large), std::move(contexts), n_shared, n_threads);
             },
             nb::arg("ctx_large"), nb::arg("pairs"), nb::arg("n_shared"), nb::arg("n_threads"))
        .def("open", &StepSampler::open, nb::arg("temp"), nb::arg("top_k"), nb::arg("top_p"), nb::arg("min_p"),
             nb::arg("seed"), nb::arg("order"), nb::arg("alphas"), nb::arg("n_logprobs"))
        .def("close", &StepSampler::close, nb::arg("handle"))
        .def("n_logprobs", &StepSampler::n_logprobs, nb::arg("handle"))
        .def_prop_ro("n_open", &StepSampler::n_open)
        .def_prop_ro("n_threads", &StepSampler::n_threads)
        // -> (tokens int32[n], changed bool[n], logprob float32[n], top_ids int32[n, k], top_logprobs float32[n, k])
        .def("sample",
             [](StepSampler & self, const std::vector<int32_t> & rows, const std::vector<int32_t> & handles,
                int32_t k_max) {
                 const size_t n = rows.size();
                 k_max = std::max(k_max, 0);
                 auto [tokens, tokens_owner] = owned<int32_t>(n);
                 auto [changed, changed_owner] = owned<bool>(n);
                 auto [logprob, logprob_owner] = owned<float>(n);
                 auto [top_ids, top_ids_owner] = owned<int32_t>(n * k_max);
                 auto [top_lp, top_lp_owner] = owned<float>(n * k_max);
                 {
                     nb::gil_scoped_release release;
                     rast_step_out out{tokens, reinterpret_cast<uint8_t *>(changed), logprob, top_ids, top_lp, k_max};
                     self.sample(rows, handles, out);
                 }
                 return nb::make_tuple(Array1<int32_t>(tokens, {n}, tokens_owner),
                                       Array1<bool>(changed, {n}, changed_owner),
                                       Array1<float>(logprob, {n}, logprob_owner),
                                       Array2<int32_t>(top_ids, {n, (size_t) k_max}, top_ids_owner),
                                       Array2<float>(top_lp, {n, (size_t) k_max}, top_lp_owner));
             },
             nb::arg("rows"), nb::arg("handles"), nb::arg("k_max") = 0)
        // The scheduler's per-step call: plain Python lists, no arrays (making five numpy arrays per
        // step cost more than sampling a small vocabulary). -> (tokens list[int], changed list[bool],
        // logprob list[float | None], top list[tuple[(id, logprob), ...] | None]): each row's logprob
        // as its sequence asked when opened (None: not asked), its top only when it asked for k > 0.
        .def("sample_rows",
             [](StepSampler & self, const std::vector<int32_t> & rows, const std::vector<int32_t> & handles) {
                 const size_t n = rows.size();
                 if (handles.size() != n) throw std::invalid_argument("rows and handles differ in length");
                 int32_t k_max = 0;
                 for (int32_t h : handles) k_max = std::max(k_max, self.n_logprobs(h));
                 std::vector<int32_t> tokens(n), top_ids(n * k_max);
                 std::vector<uint8_t> changed(n);
                 std::vector<float> logprob(n), top_lp(n * k_max);
                 {
                     nb::gil_scoped_release release;
                     rast_step_out out{tokens.data(), changed.data(), logprob.data(), top_ids.data(), top_lp.data(),
                                       k_max};
                     self.sample(rows, handles, out);
                 }
                 nb::list token_list, changed_list, logprob_list, top_list;
                 for (size_t i = 0; i < n; ++i) {
                     token_list.append(tokens[i]);
                     changed_list.append(changed[i] != 0);
                     const int32_t k = self.n_logprobs(handles[i]);
                     logprob_list.append(k < 0 ? nb::none() : nb::cast(logprob[i]));
                     if (k <= 0) {
                         top_list.append(nb::none());
                         continue;
                     }
                     nb::list top;
                     for (size_t j = i * k_max; j < (i + 1) * k_max; ++j) {
                         if (top_ids[j] >= 0) top.append(nb::make_tuple(top_ids[j], top_lp[j]));
                     }
                     top_list.append(nb::tuple(top));
                 }
                 return nb::make_tuple(token_list, changed_list, logprob_list, top_list);
             },
             nb::arg("rows"), nb::arg("handles"));

    // Test hook: a pool of n_threads runs n_items rows; row fail_at (>= 0) throws. Returns the rows run.
    m.def("_row_pool_check",
          [](size_t n_threads, size_t n_items, int64_t fail_at) {
              RowPool pool(n_threads);
              std::atomic<size_t> count{0};
              nb::gil_scoped_release release;
              pool.run(n_items, [&](size_t item, size_t) {
                  if ((int64_t) item == fail_at) throw std::runtime_error("row " + std::to_string(item) + " failed");
                  count.fetch_add(1);
              });
              pool.run(n_items, [&](size_t, size_t) {});  // reusable after a clean round too
              return count.load();
          },
          nb::arg("n_threads"), nb::arg("n_items"), nb::arg("fail_at"));

    // Test hook: rast_greedy_argmax over given rows (large, then tuned/base of each pair, all n wide).
    m.def("_greedy_argmax_check",
          [](Row large, std::vector<Row> pair_rows, std::vector<float> alphas, int32_t n_shared,
             std::vector<int32_t> excluded_ids) {
              const std::vector<const float *> rows = hook_rows(large, pair_rows, alphas, n_shared, excluded_ids);
              const rast_greedy_choice c = rast_greedy_argmax(large.data(), rows.data(), alphas.data(), alphas.size(),
                                                              n_shared, excluded_ids);
              return std::make_pair(c.token, c.large_top);
          },
          nb::arg("large"), nb::arg("pair_rows"), nb::arg("alphas"), nb::arg("n_shared"), nb::arg("excluded_ids"));

    // Test hook: rast_top_k_combined over given rows -> (ids and z of the k kept, unordered; large_top).
    m.def("_top_k_combined_check",
          [](Row large, std::vector<Row> pair_rows, std::vector<float> alphas, int32_t n_shared,
             std::vector<int32_t> excluded_ids, int32_t k) {
              if (k < 1) throw std::invalid_argument("k must be >= 1");
              const std::vector<const float *> rows = hook_rows(large, pair_rows, alphas, n_shared, excluded_ids);
              std::vector<llama_token_data> kept;
              const int32_t large_top = rast_top_k_combined(large.data(), rows.data(), alphas.data(), alphas.size(),
                                                            n_shared, excluded_ids, k, kept);
              std::vector<int32_t> ids;
              std::vector<float> values;
              for (const auto & c : kept) {
                  ids.push_back(c.id);
                  values.push_back(c.logit);
              }
              return std::make_tuple(ids, values, large_top);
          },
          nb::arg("large"), nb::arg("pair_rows"), nb::arg("alphas"), nb::arg("n_shared"), nb::arg("excluded_ids"),
          nb::arg("k"));

    // Fill a llama_batch (made by llama_batch_init with n_seq_max >= 1) with n entries in one call.
    m.def("fill_batch",
          [](uintptr_t batch_addr, int32_t capacity, const std::vector<int32_t> & tokens,
             const std::vector<int32_t> & positions, const std::vector<int32_t> & seq_ids,
             const std::vector<uint8_t> & logits) {
              const size_t n = tokens.size();
              if (positions.size() != n || seq_ids.size() != n || logits.size() != n) {
                  throw std::invalid_argument("tokens, positions, seq_ids and logits differ in length");
              }
              if (n > (size_t) capacity) {
                  throw std::invalid_argument("batch holds " + std::to_string(capacity) + " tokens, got " +
                                              std::to_string(n));
              }
              auto * b = reinterpret_cast<llama_batch *>(batch_addr);
              if (!b) throw std::invalid_argument("null batch");
              b->n_tokens = (int32_t) n;
              for (size_t i = 0; i < n; ++i) {
                  b->token[i] = tokens[i];
                  b->pos[i] = positions[i];
                  b->n_seq_id[i] = 1;
                  b->seq_id[i][0] = seq_ids[i];
                  b->logits[i] = (int8_t) (logits[i] != 0);
              }
          },
          nb::arg("batch"), nb::arg("capacity"), nb::arg("tokens"), nb::arg("positions"), nb::arg("seq_ids"),
          nb::arg("logits"));
}
