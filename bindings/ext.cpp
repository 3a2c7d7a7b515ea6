// Python binding (nanobind) of the RAST sampler chain: the delta sampler first, then llama.cpp's
// own temperature / top-k / top-p / min-p samplers and dist (or greedy) last. Python hands over
// raw llama_context / llama_model addresses from llama-cpp-python; this module never owns them.
// One SamplerChain owns one llama_sampler chain and frees it in close() (or on destruction); any use
// after close() raises rast_gguf.errors.ClosedError (the engine closes its chains before its contexts).
#include "delta_sampler.h"
#include "parallel_decode.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

namespace nb = nanobind;

// Thrown for a closed object; becomes rast_gguf.errors.ClosedError in Python (translator below).
struct closed_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
void rast_register_step_sampler(nb::module_ & m);  // step_sampler.cpp
// A context has no logits at the requested output row (nothing decoded yet, or that batch entry
// had logits=false); raised in Python as rast_gguf.errors.DecodeError.
struct rast_no_output_row : std::runtime_error {
    using std::runtime_error::runtime_error;
};
void rast_register_speculative(nb::module_ & m);  // speculative_py.cpp

template <typename T> static T * from_addr(uintptr_t addr) {
    if (addr == 0) {
        throw std::invalid_argument("null llama handle");
    }
    return reinterpret_cast<T *>(addr);
}

struct SamplerChain {
    llama_context * ctx_large = nullptr;
    llama_sampler * chain     = nullptr;
    llama_sampler * delta     = nullptr; // owned by chain
    llama_sampler * probe     = nullptr; // owned by chain
    int32_t         n_vocab   = 0;
    bool            greedy    = false;
    int32_t         fast_top_k = 0;          // > 0: sampled rows start from the top-k ids picked in one pass
    std::vector<int32_t> excluded_ids;       // for the fast paths
    std::vector<const float *> pair_logits;  // scratch: tuned/base rows of every pair
    std::vector<float> alphas;               // scratch
    std::vector<llama_token_data> candidates;  // scratch of the sampled fast path
    bool             track_delta = false;
    rast_delta_stats last_delta  = {-1, 0.0f, 0.0f};

    SamplerChain(uintptr_t ctx_large_addr, const std::vector<std::tuple<float, uintptr_t, uintptr_t>> & pairs,
                 int32_t n_shared, float temp, int32_t top_k, float top_p, float min_p, uint32_t seed,
                 const std::string & order) {
        ctx_large = from_addr<llama_context>(ctx_large_addr);
        const llama_vocab * vocab = llama_model_get_vocab(llama_get_model(ctx_large));
        n_vocab = llama_vocab_n_tokens(vocab);
        if (n_shared <= 0 || n_shared > n_vocab) {
            throw std::invalid_argument("n_shared must be in [1, n_vocab of the large model]");
        }

        std::vector<rast_pair> rast_pairs;
        std::vector<uint8_t> excluded(n_shared, 0);
        rast_vocab_mark_unused(vocab, n_shared, excluded);
        for (const auto & [alpha, tuned_addr, base_addr] : pairs) {
            auto * ctx_tuned = from_addr<llama_context>(tuned_addr);
            auto * ctx_base  = from_addr<llama_context>(base_addr);
            rast_vocab_mark_unused(llama_model_get_vocab(llama_get_model(ctx_tuned)), n_shared, excluded);
            rast_vocab_mark_unused(llama_model_get_vocab(llama_get_model(ctx_base)),  n_shared, excluded);
            rast_pairs.push_back({alpha, ctx_tuned, ctx_base});
        }
        excluded.resize(n_shared);
        excluded_ids = rast_excluded_ids(excluded);
        greedy = temp <= 0.0f;
        // top-k is the first truncation link in either order: its k ids are all the chain can keep
        fast_top_k = greedy ? 0 : rast_one_pass_top_k(top_k, n_shared);

        llama_sampler_chain_params params = llama_sampler_chain_default_params();
        params.no_perf = true;
        chain = llama_sampler_chain_init(params);
        delta = rast_delta_init(std::move(rast_pairs), n_shared, std::move(excluded));
        probe = rast_probe_init(n_vocab);
        llama_sampler_chain_add(chain, delta);

        if (temp <= 0.0f) {
            llama_sampler_chain_add(chain, probe);
            llama_sampler_chain_add(chain, llama_sampler_init_greedy());
            return;
        }
        auto add_truncation = [&]() {
            if (top_k > 0)     llama_sampler_chain_add(chain, llama_sampler_init_top_k(top_k));
            if (top_p < 1.0f)  llama_sampler_chain_add(chain, llama_sampler_init_top_p(top_p, 1));
            if (min_p > 0.0f)  llama_sampler_chain_add(chain, llama_sampler_init_min_p(min_p, 1));
        };
        if (order == "reference") {        // temperature first, as the RAST reference (vLLM) does
            if (temp != 1.0f) llama_sampler_chain_add(chain, llama_sampler_init_temp(temp));
            add_truncation();
        } else if (order == "llama") {     // llama.cpp's default: truncation, then temperature
            add_truncation();
            if (temp != 1.0f) llama_sampler_chain_add(chain, llama_sampler_init_temp(temp));
        } else {
            llama_sampler_free(chain);
            chain = nullptr;
            throw std::invalid_argument("order must be 'llama' or 'reference'");
        }
        llama_sampler_chain_add(chain, probe);
        llama_sampler_chain_add(chain, llama_sampler_init_dist(seed));
    }

    ~SamplerChain() { close(); }

    void close() {
        if (chain) {
            llama_sampler_free(chain);
            chain = delta = probe = nullptr;
        }
    }

    void check_open() const {
        if (!chain) {
            throw closed_error("this sampler chain is closed (closed itself, or its engine was closed); "
                               "make a new one with engine.sampler() on an open engine");
        }
    }

    // llama_sampler_sample aborts the process when the large context has no row idx, and the delta
    // sampler (a C callback that cannot throw) would read NULL for a pair context without it.
    void check_output_rows(int32_t idx) const {
        auto check = [idx](llama_context * ctx, const std::string & what) {
            if (llama_get_logits_ith(ctx, idx) == nullptr) {
                throw rast_no_output_row("no logits at output row " + std::to_string(idx) + " of the " + what +
                                         " context: decode tokens with logits for that row before sampling");
            }
        };
        check(ctx_large, "large model's");
        const auto & pairs = rast_delta_get_ctx(delta)->pairs;
        for (size_t k = 0; k < pairs.size(); ++k) {
            check(pairs[k].ctx_tuned, "tuned model's (pair " + std::to_string(k + 1) + ")");
            check(pairs[k].ctx_base,  "base model's (pair " + std::to_string(k + 1) + ")");
        }
    }

    int32_t sample(int32_t idx) {
        check_open();
        check_output_rows(idx);
        auto * delta_ctx = rast_delta_get_ctx(delta);
        if ((greedy || fast_top_k > 0) && !track_delta && !rast_probe_get_ctx(probe)->enabled) {
            pair_logits.clear();
            alphas.clear();
            for (const auto & p : delta_ctx->pairs) {
                pair_logits.push_back(llama_get_logits_ith(p.ctx_tuned, idx));
                pair_logits.push_back(llama_get_logits_ith(p.ctx_base, idx));
                alphas.push_back(p.alpha);
            }
            const float * large = llama_get_logits_ith(ctx_large, idx);
            if (greedy) {
                // the chain would build an n_vocab candidate array, add the delta and take its argmax:
                // one pass over the logits chooses the same id (greedy, delta and probe keep no state)
                const rast_greedy_choice choice = rast_greedy_argmax(large, pair_logits.data(), alphas.data(),
                                                                     alphas.size(), delta_ctx->n_shared, excluded_ids);
                return choice.token < 0 ? 0 : choice.token;  // nothing finite: greedy takes the first candidate
            }
            // sampled with top-k: the chain's links after the delta run on the k ids of largest
            // combined logit (what its top-k keeps of the full array), then the chain accepts the
            // token as llama_sampler_sample would
            rast_top_k_combined(large, pair_logits.data(), alphas.data(), alphas.size(), delta_ctx->n_shared,
                                excluded_ids, fast_top_k, candidates);
            llama_token_data_array cur_p = {candidates.data(), candidates.size(), -1, false};
            for (int32_t i = 1; i < llama_sampler_chain_n(chain); ++i) {  // link 0 is the delta, already added
                llama_sampler_apply(llama_sampler_chain_get(chain, i), &cur_p);
            }
            if (cur_p.selected < 0 || (size_t) cur_p.selected >= cur_p.size) {
                throw std::runtime_error("llama.cpp's sampler selected no candidate");
            }
            const llama_token token = cur_p.data[cur_p.selected].id;
            llama_sampler_accept(chain, token);
            return token;
        }
        delta_ctx->output_index = idx;
        delta_ctx->missing_rows = false;
        const llama_token token = llama_sampler_sample(chain, ctx_large, idx);
        if (delta_ctx->missing_rows) {
            throw rast_no_output_row("a small model's context lost its logits at output row " + std::to_string(idx));
        }
        if (track_delta) {
            last_delta = rast_delta_step_stats(rast_delta_get_ctx(delta), llama_get_logits_ith(ctx_large, idx), token);
        }
        return token;
    }

    // Per-step delta stats (an extra pass over the vocabulary per token), only while enabled.
    void set_track_delta(bool enabled) {
        check_open();
        track_delta = enabled;
    }

    // (large model's top id, log p_large(chosen), log p_rast(chosen)) of the last sample().
    std::tuple<int32_t, float, float> delta_stats() const {
        check_open();
        if (!track_delta) throw std::runtime_error("delta tracking is off; call set_track_delta(True) first");
        return {last_delta.large_top, last_delta.logp_large, last_delta.logp_rast};
    }

    void set_alpha(size_t pair_index, float alpha) {
        check_open();
        auto & pairs = rast_delta_get_ctx(delta)->pairs;
        if (pair_index >= pairs.size()) throw std::out_of_range("no such pair");
        pairs[pair_index].alpha = alpha;
    }

    void reset() {
        check_open();
        llama_sampler_reset(chain);
    }

    void set_record(bool enabled) {
        check_open();
        rast_probe_get_ctx(probe)->enabled = enabled;
    }

    // The candidates' logits right before the final draw (after delta, temperature and truncation),
    // as a copy: -inf marks removed ids. Only filled while recording.
    nb::ndarray<nb::numpy, float, nb::ndim<1>> recorded_logits() const {
        check_open();
        const auto & src = rast_probe_get_ctx(probe)->logits;
        auto * copy = new std::vector<float>(src);
        nb::capsule owner(copy, [](void * p) noexcept { delete (std::vector<float> *) p; });
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(copy->data(), {copy->size()}, owner);
    }

    std::vector<std::string> names() const {
        check_open();
        std::vector<std::string> out;
        for (int32_t i = 0; i < llama_sampler_chain_n(chain); ++i) {
            out.emplace_back(llama_sampler_name(llama_sampler_chain_get(chain, i)));
        }
        return out;
    }

    int32_t n_excluded() const {
        check_open();
        int32_t n = 0;
        for (uint8_t e : rast_delta_get_ctx(delta)->excluded) n += e;
        return n;
    }

    // Mean seconds of one delta-sampler apply over a full n_vocab candidate array built from the
    // large model's logits at row idx (the per-token cost the delta adds to the chain).
    double time_delta_apply(int32_t idx, int32_t n_iter) {
        check_open();
        check_output_rows(idx);
        const float * logits = llama_get_logits_ith(ctx_large, idx);
        rast_delta_get_ctx(delta)->output_index = idx;
        std::vector<llama_token_data> cur(n_vocab);
        double total = 0.0;
        for (int32_t it = 0; it < n_iter; ++it) {
            for (int32_t id = 0; id < n_vocab; ++id) cur[id] = {id, logits[id], 0.0f};
            llama_token_data_array cur_p = {cur.data(), cur.size(), -1, false};
            const auto t0 = std::chrono::steady_clock::now();
            llama_sampler_apply(delta, &cur_p);
            total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        return total / n_iter;
    }
};

// Stand-in for llama_decode in _parallel_decoder_selftest: fake context k (address k) returns code k,
// and the one whose address is fake_throw_ctx throws instead.
static std::atomic<uintptr_t> fake_throw_ctx{0};

static int32_t fake_decode(llama_context * ctx, llama_batch) {
    const auto address = reinterpret_cast<uintptr_t>(ctx);
    if (address == fake_throw_ctx.load()) {
        throw std::runtime_error("decode failed in fake context " + std::to_string(address));
    }
    return (int32_t) address;
}

NB_MODULE(_ext, m) {
    m.doc() = "C++ part of rast-gguf: the RAST delta sampler as a llama_sampler, and vocab helpers.";
    rast_register_step_sampler(m);

    // The Python type is looked up once and kept for the process's life (never decref'd at exit).
    PyObject * closed_type = nb::object(nb::module_::import_("rast_gguf.errors").attr("ClosedError")).release().ptr();
    nb::register_exception_translator(
        [](const std::exception_ptr & p, void * payload) {
            try {
                std::rethrow_exception(p);
            } catch (const closed_error & e) {
                PyErr_SetString(static_cast<PyObject *>(payload), e.what());
            }
        },
        closed_type);

    nb::register_exception_translator([](const std::exception_ptr & p, void *) {
        try {
            std::rethrow_exception(p);
        } catch (const rast_no_output_row & e) {
            nb::object error = nb::module_::import_("rast_gguf.errors").attr("DecodeError");
            PyErr_SetString(error.ptr(), e.what());
        }
    });

    nb::class_<SamplerChain>(m, "SamplerChain", nb::is_weak_referenceable())
        .def(nb::init<uintptr_t, const std::vector<std::tuple<float, uintptr_t, uintptr_t>> &, int32_t,
                      float, int32_t, float, float, uint32_t, const std::string &>(),
             nb::arg("ctx_large"), nb::arg("pairs"), nb::arg("n_shared"), nb::arg("temp"), nb::arg("top_k"),
             nb::arg("top_p"), nb::arg("min_p"), nb::arg("seed"), nb::arg("order"))
        .def("sample", &SamplerChain::sample, nb::arg("idx"), nb::call_guard<nb::gil_scoped_release>())
        .def("set_alpha", &SamplerChain::set_alpha, nb::arg("pair_index"), nb::arg("alpha"))
        .def("reset", &SamplerChain::reset)
        .def("set_record", &SamplerChain::set_record, nb::arg("enabled"))
        .def("set_track_delta", &SamplerChain::set_track_delta, nb::arg("enabled"))
        .def("delta_stats", &SamplerChain::delta_stats)
        .def("recorded_logits", &SamplerChain::recorded_logits)
        .def("names", &SamplerChain::names)
        .def("n_excluded", &SamplerChain::n_excluded)
        .def("time_delta_apply", &SamplerChain::time_delta_apply, nb::arg("idx"), nb::arg("n_iter"),
             nb::call_guard<nb::gil_scoped_release>())
        .def("close", &SamplerChain::close);

    nb::class_<ParallelDecoder>(m, "ParallelDecoder")
        .def("__init__",
             [](ParallelDecoder * self, const std::vector<uintptr_t> & ctx_addrs) {
                 std::vector<llama_context *> contexts;
                 for (uintptr_t a : ctx_addrs) contexts.push_back(from_addr<llama_context>(a));
                 if (contexts.empty()) throw std::invalid_argument("no contexts to decode");
                 new (self) ParallelDecoder(std::move(contexts));
             },
             nb::arg("contexts"))
        // batch: the address of a llama_batch struct (ctypes.addressof); one return code per context.
        .def("decode_all",
             [](ParallelDecoder & self, uintptr_t batch_addr) {
                 if (!self.is_open()) throw std::runtime_error("parallel decoder is closed");
                 return self.decode_all(*from_addr<llama_batch>(batch_addr));
             },
             nb::arg("batch"), nb::call_guard<nb::gil_scoped_release>())
        .def("close", &ParallelDecoder::close, nb::call_guard<nb::gil_scoped_release>());

    // Failure paths of ParallelDecoder without a model: n_rounds rounds over n_contexts fake contexts
    // where context `throwing` (0-based; -1: none) throws in every odd round. Returns the messages of
    // the exceptions decode_all raised and the codes of the even rounds, all of them.
    m.def("_parallel_decoder_selftest",
          [](int32_t n_contexts, int32_t throwing, int32_t n_rounds) {
              std::vector<llama_context *> contexts;
              for (int32_t i = 0; i < n_contexts; ++i) contexts.push_back(reinterpret_cast<llama_context *>(uintptr_t(i + 1)));
              ParallelDecoder decoder(std::move(contexts), fake_decode);
              std::vector<std::string> errors;
              std::vector<int32_t> codes;
              llama_batch batch = {};
              for (int32_t round = 0; round < n_rounds; ++round) {
                  fake_throw_ctx = (round % 2 == 1 && throwing >= 0) ? uintptr_t(throwing + 1) : 0;
                  try {
                      for (int32_t code : decoder.decode_all(batch)) codes.push_back(code);
                  } catch (const std::exception & e) {
                      errors.emplace_back(e.what());
                  }
              }
              fake_throw_ctx = 0;
              return std::make_tuple(errors, codes);
          },
          nb::arg("n_contexts"), nb::arg("throwing"), nb::arg("n_rounds"), nb::call_guard<nb::gil_scoped_release>());

    m.def("vocab_first_mismatch",
          [](uintptr_t model_a, uintptr_t model_b, int32_t n) {
              return rast_vocab_first_mismatch(llama_model_get_vocab(from_addr<llama_model>(model_a)),
                                               llama_model_get_vocab(from_addr<llama_model>(model_b)), n);
          },
          nb::arg("model_a"), nb::arg("model_b"), nb::arg("n"), nb::call_guard<nb::gil_scoped_release>());

    rast_register_speculative(m);
}
