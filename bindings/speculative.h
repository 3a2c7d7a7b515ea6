// Speculative RAST: one cycle = draft k tokens, verify them with ONE batched llama_decode of the
// k+1 positions in every verifying context, accept with the speculative-sampling rule, roll back.
//
// p (the target) is the RAST distribution after the whole chain: z_large + sum alpha (z_tuned -
// z_base) on the shared ids (-inf on padding/unused ids and ids >= n_shared, as the delta sampler
// does, with the same float arithmetic), then llama.cpp's own top-k / top-p / min-p / temperature
// samplers in the chosen order, then softmax (what the dist sampler draws from). q is the drafter's
// distribution through the same chain, as it sampled (one-hot for n-gram drafts). A draft d is
// accepted with probability min(1, p(d)/q(d)); on rejection the token is drawn from the
// normalised max(0, p - q) over the full vocabulary; after k acceptances one more token is drawn
// from p (Leviathan et al. 2023, Chen et al. 2023): every emitted token is distributed exactly as
// RAST's. Greedy (temp <= 0): drafts are the drafter's argmax and are accepted while they equal
// RAST's argmax (first maximum, as llama.cpp's greedy sampler). Sampling, the token after the last
// accepted draft is made the same way from a draft the drafter would have proposed there (a draw
// from its q at that row, exact like any draft), and every draw for the token at position t uses
// uniforms keyed by (seed, t): the output then does not depend on the draft lengths chosen.
//
// Drafters: the first pair's tuned model (its logits rows at the drafted positions are exactly the
// z_tuned RAST needs there: they are copied while drafting and that context is left out of the
// verify batch), a separate model context, or n-gram prompt lookup over the token history.
//
// The drafter's decode of its last draft (of id_last when nothing is drafted) is needed only when
// every draft is accepted. With eager_draft it is queued in the verify round, after the large and
// base decodes (on a GPU llama_decode only queues work on the context's own stream, so the three
// overlap) and rolled back with the others on a rejection; without it (a CPU, where it would cost
// a whole decode on every rejection) it is decoded after the verify, only when needed.
//
// Pre-drafting (with eager_draft, where a drafter decode costs a fraction of the large model's
// verify and runs beside it): in the verify round, once the drafter's row after its last draft is
// there, the drafter also proposes the token after it (the very proposal the bonus token is decided
// from: its argmax, or its draw keyed by (seed, position) when sampling) and decodes it on its own
// stream while the large model still verifies. When every draft is accepted and the bonus token
// is that proposal, the next cycle starts from the row this decode gave and saves its first
// drafter decode; otherwise the decode is rolled back with the rest. Which tokens come out does not
// change: the proposals and draws are the same functions of the rows and positions either way.
//
// Sampling without candidate arrays of the whole vocabulary: with top-k on, p and q go through the
// chain on the k largest logits picked in one pass over the row, and the draws and the residual
// walk only the ids of nonzero probability (their support), which give the same draws as walking
// every id. The drafter's proposal after its last row is made as soon as that row is there (while
// the large model computes), and a cycle that accepts all its drafts reports whether that proposal
// was accepted: the draft-length rule's one observation of a cycle without drafts.
#pragma once

#include "delta_sampler.h"
#include "llama.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

struct rast_chain_settings {
    float   temp      = 0.8f;   // <= 0: greedy
    int32_t top_k     = 40;
    float   top_p     = 0.95f;
    float   min_p     = 0.05f;
    bool    reference = false;  // temperature before truncation (the RAST reference) instead of after
};

// llama.cpp's truncation + temperature samplers (no delta, no final draw) in the order RAST's
// chain uses; turns a dense logit row into the dense post-chain logits and probabilities. With
// top-k on (rast_one_pass_top_k) the links run on the k largest logits, picked in one pass over
// the row: what llama.cpp's top-k, the first truncation link in either order, keeps of the full
// candidate array.
class rast_post_chain {
  public:
    rast_post_chain(const rast_chain_settings & s, int32_t n_vocab);
    ~rast_post_chain();
    rast_post_chain(const rast_post_chain &) = delete;
    rast_post_chain & operator=(const rast_post_chain &) = delete;

    // Sampling only. The logits are row (+ add where not null, `z = row; z += add` in float) for
    // the ids below n_row; ids in excluded (ascending) and from n_row on are never picked. probs
    // (n_vocab) must be zero outside `support` on entry (zeros, or what the last call with this
    // support left): on return it holds the softmax of the post-chain logits, and support the ids
    // of nonzero probability, ascending. logits_out (may be null): the post-chain logits, -inf where
    // removed. Returns the top probability.
    float apply(const float * row, const float * add, int32_t n_row, const std::vector<int32_t> & excluded,
                float * logits_out, float * probs, std::vector<int32_t> & support);

  private:
    llama_sampler *               chain_ = nullptr; // null when greedy
    int32_t                       n_vocab_;
    int32_t                       one_pass_k_ = 0;  // > 0: top-k picked in one pass (see above)
    std::vector<llama_token_data> cur_;
};

// Index of the first maximum of z[0..n) (llama.cpp's greedy rule), block by block.
int32_t rast_argmax(const float * z, int32_t n);

// The ids a draw walks, ascending: every id below n, or only the listed ones (a support: every
// other id has probability 0, so both walks give the same draw, bit for bit).
struct rast_ids {
    int32_t         n;
    const int32_t * ids = nullptr;  // null: 0 .. n-1; else ids[0 .. n)
    int32_t operator[](int32_t j) const { return ids ? ids[j] : j; }
};

// Draw from the distribution probs (need not be normalised; sum > 0) over `ids` with u in [0, 1).
int32_t rast_draw(const float * probs, rast_ids ids, double u);

// The speculative-sampling decision for one draft d drawn from q: accept (returns d) when
// u_accept < p(d)/q(d), else a draw (with u_residual) from normalised max(0, p - q), which is 0
// outside p's support p_ids. wrong_residual (tests only) draws from p instead: the rule then is no
// longer exact. *accepted says which happened.
int32_t rast_accept_or_resample(const float * p, const float * q, rast_ids p_ids, int32_t d, double u_accept,
                                double u_residual, bool wrong_residual, bool * accepted);

// A uniform in [0, 1) that depends only on (seed, position, purpose): the draws for the token at a
// position are the same whatever draft length led there, so a seeded run repeats exactly although
// the adaptive draft length follows timings.
double rast_uniform(uint64_t seed, int64_t position, int32_t purpose);

enum rast_draft_kind { RAST_DRAFT_TUNED = 0, RAST_DRAFT_MODEL = 1, RAST_DRAFT_NGRAM = 2 };

struct rast_cycle_result {
    std::vector<llama_token> tokens;     // emitted: the accepted drafts, then one sampled token
    int32_t                  n_drafted = 0;
    int32_t                  n_accepted = 0;
    double                   t_draft = 0.0;  // seconds drafting (drafter decodes + q)
    double                   t_verify = 0.0; // seconds of the verify round (the batched decodes, synchronised,
                                             // with the pairs' delta rows computed while the large one runs)
    int32_t                  n_draft_decodes = 0; // drafter decodes counted in t_draft
    bool                     carried = false;     // started from the row a pre-draft decoded (one decode saved)
    bool                     hit = false;         // ended on its pre-draft: the next cycle is carried
    int32_t                  bonus_accepted = -1; // every draft accepted: whether the draft the drafter would
                                                  // have made next (the one the bonus token is decided from)
                                                  // was accepted, 1 or 0; -1 when not known without a decode
                                                  // (a rejection, n-gram drafts, a greedy CPU drafter after k > 0)
};

class rast_speculator {
  public:
    rast_speculator(llama_context * ctx_large, std::vector<rast_pair> pairs, int32_t n_shared,
                    std::vector<uint8_t> excluded, const rast_chain_settings & settings, uint64_t seed,
                    rast_draft_kind kind, llama_context * ctx_draft, int32_t n_batch_max, bool eager_draft,
                    bool predraft);
    ~rast_speculator();

    // history: the tokens so far; every RAST context must hold history[0..n-1) (the last one is
    // decoded by the first cycle). A separate drafter context may hold any prefix of it.
    void start(const std::vector<llama_token> & history);

    // One cycle with up to k_max drafts (stopping when the drafter's top probability < p_min;
    // fewer than n_min drafts are dropped). predraft: pre-draft in this cycle's verify round (where
    // the speculator pre-drafts at all). On return every RAST context holds n_past() tokens.
    rast_cycle_result cycle(int32_t k_max, float p_min, int32_t n_min, int32_t ngram_min, int32_t ngram_max,
                            bool predraft = true);

    int32_t n_past() const { return (int32_t) history_.size(); }
    void set_seed(uint64_t seed) { seed_ = seed; }

    bool wrong_residual = false;  // tests only (see rast_accept_or_resample)
    int32_t forced_accept = -1;   // benchmarks only: >= 0 accepts exactly min(this, k) drafts per cycle
                                  // whatever p says (times a cycle at a fixed accepted length; the
                                  // output is then NOT RAST's)
    bool    forced_hit = false;   // benchmarks only, with forced_accept: a cycle that accepts all its
                                  // drafts emits its pre-draft as the bonus token (the next is carried)
    bool record = false;          // keep the post-chain logits of each emitted token
    bool track_delta = false;     // keep rast_delta_stats of each emitted token
    std::vector<std::vector<float>> recorded;     // per emitted token of the last cycle
    std::vector<rast_delta_stats>   delta_stats;  // per emitted token of the last cycle

  private:
    int32_t draft_with_model(llama_context * ctx, int32_t k_max, float p_min, bool keep_rows);
    bool    next_draft(const float * row, int32_t j, float p_min, llama_token * d);
    int32_t draft_ngram(int32_t k_max, int32_t ngram_min, int32_t ngram_max);
    const float * drafter_row(int32_t i);  // the drafter's logits for row i (tuned/model drafters)
    const float * delta_row(int32_t i);      // the pairs' delta at verify row i (computed once a cycle)
    int32_t rast_row(int32_t i, float * z);  // RAST logits of verify row i into z (may be null); returns their first argmax
    const float * tuned_row(size_t pair, int32_t i);
    void    emit_stats(const float * z_large, const float * z_rast, const float * post_logits, llama_token token);
    int32_t decode(llama_context * ctx, llama_batch & batch);
    void    decode_drafter(llama_batch & batch);  // decode + note where the drafter's logits are
    void    queue_drafter_token(llama_token token, llama_pos pos);  // the same for one token in the verify round
                                                                     // (not counted as a drafting decode)
    void    keep_drafter_row(int32_t i, const float * row);          // copy into rows_ as row i
    bool    propose_bonus(int32_t n, int32_t k);  // bonus_draft_ from the drafter's row k, where it is there
    void    predraft(int32_t n, int32_t k);

    llama_context *          ctx_large_;
    std::vector<rast_pair>   pairs_;
    int32_t                  n_vocab_, n_shared_;
    std::vector<uint8_t>     allowed_;  // n_vocab: 1 where RAST may pick the id
    rast_chain_settings      settings_;
    rast_post_chain          chain_p_, chain_q_;
    uint64_t                 seed_;
    rast_draft_kind          kind_;
    llama_context *          ctx_draft_;
    int32_t                  n_batch_max_;
    bool                     eager_draft_;
    bool                     predraft_;
    bool                     keep_rows_;   // the drafter's rows are copied (tuned drafter, or sampling)
    int32_t                  n_draft_read_ = 0;  // ids of a drafter row RAST reads: min(n_shared, drafter vocabulary)
    llama_batch              batch_, batch_one_;
    std::vector<llama_context *> verifiers_;  // the large context first
    std::vector<uint32_t>    mask_;     // n_shared: all ones where RAST may pick the id, 0 elsewhere
    std::vector<int32_t>     excluded_ids_;  // the ids below n_shared RAST may not pick, ascending

    std::vector<llama_token> history_;   // tokens every RAST context holds
    llama_token              id_last_ = -1;  // sampled, decoded nowhere yet
    std::vector<llama_token> drafts_;
    std::vector<float>       q_;          // drafts x n_vocab: q of each draft (sampled drafting)
    std::vector<std::vector<int32_t>> q_ids_;  // per row of q_: its support (sampling)
    std::vector<int32_t>     p_ids_;      // the support of p_
    std::vector<float>       rows_;       // (drafts + 1) x n_vocab: the drafter's copied rows (tuned)
    int32_t                  n_rows_ = 0; // rows copied
    llama_token              pending_token_ = -1;  // eager: the drafter's decode that goes to the verify round,
    int32_t                  pending_row_ = -1;    // giving row pending_row_ (-1: none)
    int32_t                  eager_row_ = -1;      // the row the drafter decoded in this verify round (-1: none)
    std::vector<float>       delta_;               // (drafts + 1) x n_vocab: the pairs' delta per verify row
    std::vector<uint8_t>     delta_ready_;
    double                   lazy_seconds_ = 0.0; // drafter decode of the last draft after a full acceptance
    int32_t                  n_draft_decodes_ = 0;
    llama_pos                logits_pos_ = -1;    // position of the drafter's latest logits (-1: none known)
    llama_token              ahead_token_ = -1;   // pre-drafted and decoded at n + k + 1 this cycle (-1: none)
    llama_token              bonus_draft_ = -1;   // the drafter's proposal after row k this cycle (-1: not yet)
    bool                     carry_ = false;      // the drafter holds id_last with its logits (a pre-draft hit)
    bool                     carried_ = false;    // this cycle started from such a row
    std::vector<float>       z_, post_, p_;
};
