// Python binding (nanobind) of speculative RAST (speculative.h): `Speculator`, one owner of a
// rast_speculator over llama_context addresses that Python keeps alive, and `accept_histogram`,
// the accept/residual step alone on fixed p, q vectors, and `post_chain_probs`, the sampling chain
// the speculator turns rows into p and q with (both for the exactness tests).
#include "speculative.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <memory>
#include <stdexcept>

namespace nb = nanobind;

static llama_context * ctx_from(uintptr_t addr) {
    if (addr == 0) throw std::invalid_argument("null llama_context");
    return reinterpret_cast<llama_context *>(addr);
}

struct Speculator {
    std::unique_ptr<rast_speculator> spec;

    Speculator(uintptr_t ctx_large_addr, const std::vector<std::tuple<float, uintptr_t, uintptr_t>> & pairs,
               int32_t n_shared, float temp, int32_t top_k, float top_p, float min_p, uint64_t seed,
               const std::string & order, const std::string & drafter, uintptr_t ctx_draft_addr, int32_t n_batch_max,
               bool eager_draft, bool predraft) {
        llama_context * ctx_large = ctx_from(ctx_large_addr);
        const llama_vocab * vocab = llama_model_get_vocab(llama_get_model(ctx_large));
        if (n_shared <= 0 || n_shared > llama_vocab_n_tokens(vocab)) {
            throw std::invalid_argument("n_shared must be in [1, n_vocab of the large model]");
        }
        std::vector<uint8_t> excluded(n_shared, 0);
        rast_vocab_mark_unused(vocab, n_shared, excluded);
        std::vector<rast_pair> rast_pairs;
        for (const auto & [alpha, tuned_addr, base_addr] : pairs) {
            auto * ctx_tuned = ctx_from(tuned_addr);
            auto * ctx_base = ctx_from(base_addr);
            rast_vocab_mark_unused(llama_model_get_vocab(llama_get_model(ctx_tuned)), n_shared, excluded);
            rast_vocab_mark_unused(llama_model_get_vocab(llama_get_model(ctx_base)), n_shared, excluded);
            rast_pairs.push_back({alpha, ctx_tuned, ctx_base});
        }
        excluded.resize(n_shared);
        if (order != "llama" && order != "reference") throw std::invalid_argument("order must be 'llama' or 'reference'");
        rast_chain_settings settings{temp, top_k, top_p, min_p, order == "reference"};
        rast_draft_kind kind;
        llama_context * ctx_draft = nullptr;
        if (drafter == "tuned") {
            kind = RAST_DRAFT_TUNED;
        } else if (drafter == "model") {
            kind = RAST_DRAFT_MODEL;
            ctx_draft = ctx_from(ctx_draft_addr);
        } else if (drafter == "ngram") {
            kind = RAST_DRAFT_NGRAM;
        } else {
            throw std::invalid_argument("drafter must be 'tuned', 'model' or 'ngram'");
        }
        if (n_batch_max < 1) throw std::invalid_argument("n_batch_max must be >= 1");
        spec = std::make_unique<rast_speculator>(ctx_large, std::move(rast_pairs), n_shared, std::move(excluded),
                                                 settings, seed, kind, ctx_draft, n_batch_max, eager_draft, predraft);
    }

    rast_speculator & get() const {
        if (!spec) throw std::runtime_error("speculator is closed");
        return *spec;
    }

    // (tokens, n_drafted, n_accepted, t_draft, t_verify, n_draft_decodes, carried, hit, bonus_accepted):
    // see rast_cycle_result
    std::tuple<std::vector<int32_t>, int32_t, int32_t, double, double, int32_t, bool, bool, int32_t>
    cycle(int32_t k_max, float p_min, int32_t n_min, int32_t ngram_min, int32_t ngram_max, bool predraft) {
        rast_cycle_result r = get().cycle(k_max, p_min, n_min, ngram_min, ngram_max, predraft);
        return {std::vector<int32_t>(r.tokens.begin(), r.tokens.end()), r.n_drafted, r.n_accepted, r.t_draft, r.t_verify,
                r.n_draft_decodes, r.carried, r.hit, r.bonus_accepted};
    }

    nb::ndarray<nb::numpy, float, nb::ndim<1>> recorded_logits(size_t i) const {
        const auto & rec = get().recorded;
        if (i >= rec.size()) throw std::out_of_range("no recorded logits for that token (recording off?)");
        auto * copy = new std::vector<float>(rec[i]);
        nb::capsule owner(copy, [](void * p) noexcept { delete (std::vector<float> *) p; });
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(copy->data(), {copy->size()}, owner);
    }

    std::vector<std::tuple<int32_t, float, float>> delta_stats() const {
        std::vector<std::tuple<int32_t, float, float>> out;
        for (const auto & s : get().delta_stats) out.emplace_back(s.large_top, s.logp_large, s.logp_rast);
        return out;
    }
};

using FloatVec = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

void rast_register_speculative(nb::module_ & m) {
    nb::class_<Speculator>(m, "Speculator")
        .def(nb::init<uintptr_t, const std::vector<std::tuple<float, uintptr_t, uintptr_t>> &, int32_t, float, int32_t,
                      float, float, uint64_t, const std::string &, const std::string &, uintptr_t, int32_t, bool, bool>(),
             nb::arg("ctx_large"), nb::arg("pairs"), nb::arg("n_shared"), nb::arg("temp"), nb::arg("top_k"),
             nb::arg("top_p"), nb::arg("min_p"), nb::arg("seed"), nb::arg("order"), nb::arg("drafter"),
             nb::arg("ctx_draft"), nb::arg("n_batch_max"), nb::arg("eager_draft") = false, nb::arg("predraft") = false)
        .def("start", [](Speculator & s, const std::vector<int32_t> & history) {
                 s.get().start(std::vector<llama_token>(history.begin(), history.end()));
             }, nb::arg("history"))
        .def("cycle", &Speculator::cycle, nb::arg("k_max"), nb::arg("p_min"), nb::arg("n_min"), nb::arg("ngram_min"),
             nb::arg("ngram_max"), nb::arg("predraft") = true, nb::call_guard<nb::gil_scoped_release>())
        .def_prop_ro("n_past", [](const Speculator & s) { return s.get().n_past(); })
        .def("set_record", [](Speculator & s, bool on) { s.get().record = on; }, nb::arg("enabled"))
        .def("set_track_delta", [](Speculator & s, bool on) { s.get().track_delta = on; }, nb::arg("enabled"))
        .def("set_seed", [](Speculator & s, uint64_t seed) { s.get().set_seed(seed); }, nb::arg("seed"))
        .def("set_wrong_residual", [](Speculator & s, bool on) { s.get().wrong_residual = on; }, nb::arg("enabled"))
        .def("set_forced_accept", [](Speculator & s, int32_t n) { s.get().forced_accept = n; }, nb::arg("n"))
        .def("set_forced_hit", [](Speculator & s, bool on) { s.get().forced_hit = on; }, nb::arg("enabled"))
        .def("recorded_logits", &Speculator::recorded_logits, nb::arg("i"))
        .def("delta_stats", &Speculator::delta_stats)
        .def("close", [](Speculator & s) { s.spec.reset(); });

    // Rows (r x n) through one rast_post_chain, in turn, into one probability buffer (as the
    // speculator reuses its p and q rows): each row's probabilities and support.
    m.def("post_chain_probs",
          [](nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu> rows,
             const std::vector<int32_t> & excluded, float temp, int32_t top_k, float top_p, float min_p,
             bool reference) {
              const int32_t n = (int32_t) rows.shape(1);
              for (int32_t id : excluded) {
                  if (id < 0 || id >= n) throw std::invalid_argument("excluded ids must be in [0, n)");
              }
              if (!std::is_sorted(excluded.begin(), excluded.end())) throw std::invalid_argument("excluded ids must be ascending");
              rast_chain_settings settings;
              settings.temp = temp; settings.top_k = top_k; settings.top_p = top_p; settings.min_p = min_p;
              settings.reference = reference;
              rast_post_chain chain(settings, n);
              std::vector<float> probs(n, 0.0f);
              std::vector<int32_t> support;
              std::vector<std::vector<float>> all_probs;
              std::vector<std::vector<int32_t>> supports;
              for (size_t r = 0; r < rows.shape(0); ++r) {
                  chain.apply(rows.data() + r * n, nullptr, n, excluded, nullptr, probs.data(), support);
                  all_probs.push_back(probs);
                  supports.push_back(support);
              }
              return std::make_tuple(all_probs, supports);
          },
          nb::arg("rows"), nb::arg("excluded"), nb::arg("temp"), nb::arg("top_k"), nb::arg("top_p"), nb::arg("min_p"),
          nb::arg("reference"));

    // n_runs times: d ~ q, then the accept/residual step; returns how often each id came out.
    // sparse: the draws walk only the ids where p (and q) are nonzero, as the speculator does.
    m.def("accept_histogram",
          [](FloatVec p, FloatVec q, int64_t n_runs, uint64_t seed, bool wrong_residual, bool sparse) {
              if (p.shape(0) != q.shape(0) || p.shape(0) == 0) throw std::invalid_argument("p and q must be equal-length, non-empty");
              const int32_t n = (int32_t) p.shape(0);
              std::vector<int32_t> p_ids, q_ids;
              for (int32_t i = 0; i < n; ++i) {
                  if (p.data()[i] > 0.0f) p_ids.push_back(i);
                  if (q.data()[i] > 0.0f) q_ids.push_back(i);
              }
              const rast_ids p_walk = sparse ? rast_ids{(int32_t) p_ids.size(), p_ids.data()} : rast_ids{n};
              const rast_ids q_walk = sparse ? rast_ids{(int32_t) q_ids.size(), q_ids.data()} : rast_ids{n};
              std::vector<int64_t> counts(n, 0);
              for (int64_t r = 0; r < n_runs; ++r) {
                  const int32_t d = rast_draw(q.data(), q_walk, rast_uniform(seed, r, 0));
                  bool accepted;
                  counts[rast_accept_or_resample(p.data(), q.data(), p_walk, d, rast_uniform(seed, r, 1),
                                                 rast_uniform(seed, r, 2), wrong_residual, &accepted)]++;
              }
              return counts;
          },
          nb::arg("p"), nb::arg("q"), nb::arg("n_runs"), nb::arg("seed"), nb::arg("wrong_residual") = false,
          nb::arg("sparse") = false);
}
