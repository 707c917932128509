// The Lion rule on 16 fp32 lanes with AVX-512, shared by the kernels of lion_integrations.
//
// A template: avx512.py fills in the at-sign fields, the update rule (rule.py's lion_update_finite_
// rendered as AVX-512 statements) and the CPU features the kernels were compiled for, and puts this
// text in front of each kernel's own source.
#include <immintrin.h>
#include <omp.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>


// A uniform lerp weight, prepared once per step the way ATen's vectorized CPU kernel uses it:
// lerp(start, end, w) = coefficient * (end - start) + (Small ? start : end), where Small is
// |w| < 0.5 and coefficient is w if Small else w - 1. Small is a template argument, so each
// combination of the step's two weights gets its own loop.
template <bool Small>
struct LerpWeight {
    __m512 coefficient;
};

template <bool Small>
static inline LerpWeight<Small> lerp_weight(float weight) {
    return {_mm512_set1_ps(Small ? weight : weight - 1.0f)};
}

static inline bool small_weight(float weight) { return weight < 0.5f && weight > -0.5f; }

template <bool Small>
static inline __m512 lerp(__m512 start, __m512 end, const LerpWeight<Small> &weight) {
    return _mm512_fmadd_ps(weight.coefficient, _mm512_sub_ps(end, start), Small ? start : end);
}

// torch.isfinite: the lanes that are neither NaN nor +-inf (fpclass 0x99: QNaN, +inf, -inf, SNaN).
static inline __mmask16 finite(__m512 x) { return (__mmask16)~_mm512_fpclass_ps_mask(x, 0x99); }

// torch.sign: +-1 with x's sign bit, or 0 for 0 and NaN.
static inline __m512 sign(__m512 x) {
    __mmask16 nonzero = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    __m512i sign_and_one = _mm512_maskz_ternarylogic_epi32(  // (x & sign bit) | bits of 1.0
        nonzero, _mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN), _mm512_set1_epi32(0x3F800000), 0xEA);
    return _mm512_castsi512_ps(sign_and_one);
}

static inline __m512 scale(__m512 x, __m512 factor) { return _mm512_mul_ps(x, factor); }

// x where x * g > 0, else +0: the cautious mask (rule.py), NaN included among the dropped.
static inline __m512 keep_agreeing(__m512 x, __m512 g) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_mul_ps(x, g), _mm512_setzero_ps(), _CMP_GT_OQ), x);
}

// sign(x) * factor for a factor >= 0 (the step size): the factor with x's sign bit, or 0 where
// sign(x) is 0, in one instruction. Equal to the product: +-factor, and +0 for 0 and NaN.
static inline __m512 sign_times(__m512 x, __m512 factor) {
    __mmask16 nonzero = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    return _mm512_castsi512_ps(_mm512_maskz_ternarylogic_epi32(
        nonzero, _mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN), _mm512_castps_si512(factor), 0xEA));
}

// The step's scalars (rule.LionCoefficients), broadcast once, and whether the rule is cautious.
template <bool UpdateSmall, bool MomentumSmall, bool Cautious>
struct Coefficients {
    static constexpr bool cautious = Cautious;
    __m512 step_size, decay;
    LerpWeight<UpdateSmall> update_weight;
    LerpWeight<MomentumSmall> momentum_weight;
};

// The rule on 16 lanes: p (parameter), g (gradient), m (momentum), in place on p and m; lanes
// whose gradient is NaN or inf keep p and m. Returns the mask of the other (finite) lanes.
template <class Scalars>
static inline __mmask16 lion_rule(__m512 &p, __m512 g, __m512 &m, const Scalars &coefficients) {
    const __m512 step_size = coefficients.step_size, decay = coefficients.decay;
    const auto &update_weight = coefficients.update_weight;
    const auto &momentum_weight = coefficients.momentum_weight;
    if constexpr (Scalars::cautious) {
@CAUTIOUS_RULE@
    } else {
@RULE@
    }
}

// How many of the lanes in `valid` are not in `finite`.
static inline int64_t count_skipped(__mmask16 valid, __mmask16 finite) {
    return __builtin_popcount((unsigned)(valid & (__mmask16)~finite));
}

static inline __mmask16 lanes(int64_t remaining) {
    if (remaining <= 0) return 0;
    return remaining >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << remaining) - 1u);
}

template <bool UpdateSmall, bool MomentumSmall, bool Cautious>
static Coefficients<UpdateSmall, MomentumSmall, Cautious> coefficients(float step_size, float update_weight,
                                                                       float momentum_weight, float decay) {
    return {_mm512_set1_ps(step_size), _mm512_set1_ps(decay), lerp_weight<UpdateSmall>(update_weight),
            lerp_weight<MomentumSmall>(momentum_weight)};
}

// step(coefficients) with the step's scalars as the Coefficients type that fits its two weights
// (and the plain or cautious rule): one loop per combination, each with its lerp form built in.
template <bool Cautious, class Step>
static int with_coefficients(float step_size, float update_weight, float momentum_weight, float decay, Step step) {
    if (small_weight(update_weight))
        return small_weight(momentum_weight)
            ? step(coefficients<true, true, Cautious>(step_size, update_weight, momentum_weight, decay))
            : step(coefficients<true, false, Cautious>(step_size, update_weight, momentum_weight, decay));
    return small_weight(momentum_weight)
        ? step(coefficients<false, true, Cautious>(step_size, update_weight, momentum_weight, decay))
        : step(coefficients<false, false, Cautious>(step_size, update_weight, momentum_weight, decay));
}


// Whether this CPU runs the instructions the kernel was compiled for (call before the kernel).
extern "C" __attribute__((target("arch=x86-64"))) int cpu_supported(void) {
    __builtin_cpu_init();
    return @CPU_SUPPORTS@;
}
