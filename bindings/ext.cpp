// Python binding (nanobind) of the RAST sampler chain: the delta sampler first, then llama.cpp's
// own temperature / top-k / top-p / min-p samplers and dist (or greedy) last. Python hands over
// raw llama_context / llama_model addresses from llama-cpp-python; this module never owns them.
// One SamplerChain owns one llama_sampler chain and frees it in close() (or on destruction).
#include "delta_sampler.h"
#include "parallel_decode.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

namespace nb = nanobind;

void rast_register_step_sampler(nb::module_ & m);  // step_sampler.cpp

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
        if (!chain) throw std::runtime_error("sampler chain is closed");
    }

    int32_t sample(int32_t idx) {
        check_open();
        rast_delta_get_ctx(delta)->output_index = idx;
        const llama_token token = llama_sampler_sample(chain, ctx_large, idx);
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
        const float * logits = llama_get_logits_ith(ctx_large, idx);
        if (!logits) throw std::runtime_error("no logits at that output index");
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

NB_MODULE(_ext, m) {
    m.doc() = "C++ part of rast-gguf: the RAST delta sampler as a llama_sampler, and vocab helpers.";
    rast_register_step_sampler(m);

    nb::class_<SamplerChain>(m, "SamplerChain")
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

    m.def("vocab_first_mismatch",
          [](uintptr_t model_a, uintptr_t model_b, int32_t n) {
              return rast_vocab_first_mismatch(llama_model_get_vocab(from_addr<llama_model>(model_a)),
                                               llama_model_get_vocab(from_addr<llama_model>(model_b)), n);
          },
          nb::arg("model_a"), nb::arg("model_b"), nb::arg("n"), nb::call_guard<nb::gil_scoped_release>());
}
