// One Lion step on fp32 parameters with fp32 momentum, for x86-64 CPUs with AVX-512 (F, BW, VL, DQ).
//
// avx512.py puts avx512_rule.h (the update rule, lion_rule) in front of this file. One pass over
// memory: each 16-lane vector of parameter, gradient and momentum is read once, stepped, and the
// parameter and momentum written back, and the lanes whose gradient is NaN or inf (which the rule
// leaves unchanged) are counted on the way, so finding them costs no extra read.

// Steps elements [first, stop) of one parameter; returns how many of their gradients were not finite.
template <class Scalars>
static int64_t step_range(float *p, const float *g, float *m, int64_t first, int64_t stop, const Scalars &coefficients) {
    int64_t skipped = 0, i = first;
    for (; i + 16 <= stop; i += 16) {
        __m512 param = _mm512_loadu_ps(p + i), grad = _mm512_loadu_ps(g + i), momentum = _mm512_loadu_ps(m + i);
        skipped += count_skipped((__mmask16)0xFFFF, lion_rule(param, grad, momentum, coefficients));
        _mm512_storeu_ps(p + i, param);
        _mm512_storeu_ps(m + i, momentum);
    }
    if (i < stop) {
        __mmask16 k = lanes(stop - i);
        __m512 param = _mm512_maskz_loadu_ps(k, p + i), grad = _mm512_maskz_loadu_ps(k, g + i);
        __m512 momentum = _mm512_maskz_loadu_ps(k, m + i);
        skipped += count_skipped(k, lion_rule(param, grad, momentum, coefficients));
        _mm512_mask_storeu_ps(p + i, k, param);
        _mm512_mask_storeu_ps(m + i, k, momentum);
    }
    return skipped;
}

// The step on `count` contiguous fp32 parameters of numels[t] elements with their gradients and
// momenta; parameter t takes step_sizes[t] (the cautious rule's own step sizes; all equal otherwise).
// Each of `threads` OpenMP threads steps a contiguous share (whole 16-lane vectors but the last) of
// every parameter, parameter after parameter, with no barrier in between; skipped[t] (zero on
// entry) receives how many of parameter t's gradient elements were NaN or inf.
template <class Scalars>
static void step_parameters(int count, float *const *params, const float *const *grads, float *const *momenta,
                            const int64_t *numels, const float *step_sizes, Scalars coefficients, int threads,
                            int64_t *skipped) {
#pragma omp parallel num_threads(threads) firstprivate(coefficients)
    {
        int64_t team = omp_get_num_threads(), member = omp_get_thread_num();
        for (int t = 0; t < count; t++) {
            int64_t vectors = (numels[t] + 15) / 16;
            int64_t first = vectors * member / team * 16, stop = vectors * (member + 1) / team * 16;
            stop = stop < numels[t] ? stop : numels[t];
            if (first >= stop) continue;
            coefficients.step_size = _mm512_set1_ps(step_sizes[t]);
            int64_t skipped_here = step_range(params[t], grads[t], momenta[t], first, stop, coefficients);
            if (skipped_here) {
#pragma omp atomic
                skipped[t] += skipped_here;
            }
        }
    }
}

// cautious: the masked rule (rule.py); step_sizes: each parameter's step size (lr, or its cautious step size).
extern "C" void lion_step(int count, float *const *params, const float *const *grads, float *const *momenta,
                          const int64_t *numels, const float *step_sizes, int cautious, float update_weight,
                          float momentum_weight, float decay, int threads, int64_t *skipped) {
    auto step = [&](const auto &coefficients) {
        step_parameters(count, params, grads, momenta, numels, step_sizes, coefficients, threads, skipped);
        return 0;
    };
    if (cautious) with_coefficients<true>(0.0f, update_weight, momentum_weight, decay, step);
    else with_coefficients<false>(0.0f, update_weight, momentum_weight, decay, step);
}
