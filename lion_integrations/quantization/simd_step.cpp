// One Lion step on block-quantized momentum, for x86-64 CPUs with AVX-512 (F, BW, VL, DQ, VBMI).
//
// A template: simd.py fills in the at-sign fields before compiling (the codec's tables and constants,
// codec.py) and puts avx512_rule.h (the update rule, lion_rule) in front of it. This file holds what
// it takes to run them in one pass per block: decode -> rule -> new momentum to a block buffer (in
// L1) and its absmax -> encode.
//
// Layout (codec.py): a (rows, cols) fp32 parameter; blocks of `block_size` elements run along each
// row, the last one short when block_size does not divide cols; absmax is (rows, blocks per row).
// 8 bits: codes (rows, cols), one byte per element. 4 bits: codes (rows, ceil(cols / 2)); byte j of
// a block of L elements holds element j (low nibble) and element j + ceil(L/2) (high nibble), and a
// short block of odd length has a zero element as padding.
static const float DECODE4[16] __attribute__((aligned(64))) = {@DECODE4@};  // codec.decode_codes, 4 bits

// Byte b of the float codec.decode_codes(j, 8) for j = 0..127 (the 8-bit magnitudes).
static const uint8_t MAGNITUDE_BYTES8[4][128] __attribute__((aligned(64))) = {@MAGNITUDE_BYTES8@};
// PLANE_ORDER[16 L + 4 r + q] = 16 r + 4 L + q: the order that unpacking four byte planes
// (decode8x64) and packing four vectors of codes (step_block8) leave bytes in, as both work within
// 128-bit lanes; it is its own inverse.
static const uint8_t PLANE_ORDER[64] __attribute__((aligned(64))) = {@PLANE_ORDER@};

// codec.decode_codes of 64 8-bit codes, as four vectors of 16 floats in memory order, without a
// gather: codes 128..255 are the negatives of 127..0, each byte of a magnitude's float is one
// two-table byte permute over 128 entries, and unpacking the four byte planes makes floats again.
static inline void decode8x64(__m512i codes, __m512 decoded[4]) {
    codes = _mm512_permutexvar_epi8(_mm512_load_si512(PLANE_ORDER), codes);
    __mmask64 negative = _mm512_movepi8_mask(codes);
    __m512i j = _mm512_mask_sub_epi8(codes, negative, _mm512_set1_epi8((char)255), codes);
    __m512i plane[4];
    for (int b = 0; b < 4; b++)
        plane[b] = _mm512_permutex2var_epi8(_mm512_load_si512(MAGNITUDE_BYTES8[b]), j,
                                            _mm512_load_si512(MAGNITUDE_BYTES8[b] + 64));
    plane[3] = _mm512_ternarylogic_epi32(plane[3], codes, _mm512_set1_epi8((char)0x80), 0xF8);  // | sign bit
    __m512i low01 = _mm512_unpacklo_epi8(plane[0], plane[1]), high01 = _mm512_unpackhi_epi8(plane[0], plane[1]);
    __m512i low23 = _mm512_unpacklo_epi8(plane[2], plane[3]), high23 = _mm512_unpackhi_epi8(plane[2], plane[3]);
    decoded[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(low01, low23));
    decoded[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(low01, low23));
    decoded[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(high01, high23));
    decoded[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(high01, high23));
}


// How many of a sorted list of thresholds (padded with +inf to 16) lie below each magnitude in
// [0, 1]: the float's top bits (bits >> shift, less first_bucket, at least 0) pick one of 16
// buckets, a table gives how many thresholds lie below the bucket, and one compare adds the one
// threshold that may lie inside it (simd.py checks that no bucket holds two).
static inline __m512i count_below(__m512 magnitude, const int32_t *below_bucket, const float *thresholds,
                                  int shift, int first_bucket) {
    // bits >> shift < 2**16, so a saturating 16-bit subtraction clamps below bucket 0; magnitudes
    // are at most 1, so buckets stay below 16 (a NaN's wraps around; its code is 0 whatever count).
    __m512i bucket = _mm512_subs_epu16(_mm512_srli_epi32(_mm512_castps_si512(magnitude), shift),
                                       _mm512_set1_epi32(first_bucket));
    __m512i count = _mm512_permutexvar_epi32(bucket, _mm512_load_si512(below_bucket));
    __m512 next = _mm512_permutexvar_ps(count, _mm512_load_ps(thresholds));
    return _mm512_mask_add_epi32(count, _mm512_cmp_ps_mask(magnitude, next, _CMP_GT_OQ), count, _mm512_set1_epi32(1));
}

static const int32_t DECADES_BELOW8[16] __attribute__((aligned(64))) = {@DECADES_BELOW8@};
static const float DECADE_TOPS8[16] __attribute__((aligned(64))) = {@DECADE_TOPS8@};
static const float SLOPE8[16] __attribute__((aligned(64))) = {@SLOPE8@};
static const float OFFSET8[16] __attribute__((aligned(64))) = {@OFFSET8@};
static const int32_t MIDPOINTS_BELOW4[16] __attribute__((aligned(64))) = {@MIDPOINTS_BELOW4@};
static const float MIDPOINTS4[16] __attribute__((aligned(64))) = {@MIDPOINTS4@};

// codec.nearest_code's magnitude index j for 8 bits: in decade t (how many decade tops lie below
// |x|), j = min(ceil(|x| * slope_t - offset_t), 2**(t+1) - 1). The minimum never binds for |x| <= 1:
// at a decade's top the ceiling is 2**(t+1) - 1 with half a step to spare (simd.py checks). Larger
// |x| is clamped to 1 first, to the same index: x is a block's element times the inverse of the
// block's largest (see rescaled_absmax), so at most 1 plus rounding.
// NaN passes the clamp and converts to code 0, as in eager torch.
static inline __m512i magnitude_index8(__m512 x) {
    __m512 magnitude = _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_abs_ps(x));  // NaN stays (2nd operand)
    __m512i decade = count_below(magnitude, DECADES_BELOW8, DECADE_TOPS8, @SHIFT8@, @FIRST_BUCKET8@);
    __m512 position = _mm512_sub_ps(_mm512_mul_ps(magnitude, _mm512_permutexvar_ps(decade, _mm512_load_ps(SLOPE8))),
                                    _mm512_permutexvar_ps(decade, _mm512_load_ps(OFFSET8)));
    return _mm512_cvt_roundps_epi32(position, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
}

static inline __mmask16 negative(__m512 x) { return _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ); }

// codec.nearest_code for 4 bits: j = how many midpoints lie below |x|; negative values store 15 - j.
// |x| is clamped to 1 (see magnitude_index8) and NaN to 0, which no midpoint lies below.
static inline __m512i encode4(__m512 x) {
    __m512 magnitude = _mm512_max_ps(_mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_abs_ps(x)), _mm512_setzero_ps());
    __m512i j = count_below(magnitude, MIDPOINTS_BELOW4, MIDPOINTS4, @SHIFT4@, @FIRST_BUCKET4@);
    return _mm512_mask_sub_epi32(j, negative(x), _mm512_set1_epi32(15), j);
}

static const int32_t FLOORS_BELOW4[16] __attribute__((aligned(64))) = {@FLOORS_BELOW4@};
static const float FLOORS4[16] __attribute__((aligned(64))) = {@FLOORS4@};
static const float LOWER4[16] __attribute__((aligned(64))) = {@LOWER4@};
static const float GAPS4[16] __attribute__((aligned(64))) = {@GAPS4@};

// codec.code_draws for the 16 elements of indices first .. first + 15: the top DRAW_BITS bits of
// codec.mix32((index mod 2**32) XOR key), in wrapping 32-bit arithmetic.
static inline __m512i code_draws16(int64_t first, uint32_t key) {
    __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(uint32_t)first),
                                     _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512i x = _mm512_xor_si512(index, _mm512_set1_epi32((int32_t)key));
    x = _mm512_mullo_epi32(_mm512_xor_si512(x, _mm512_srli_epi32(x, 16)), _mm512_set1_epi32((int32_t)@HASH_MULTIPLIER1@));
    x = _mm512_mullo_epi32(_mm512_xor_si512(x, _mm512_srli_epi32(x, 15)), _mm512_set1_epi32((int32_t)@HASH_MULTIPLIER2@));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    return _mm512_srli_epi32(x, 32 - @DRAW_BITS@);
}

// codec.stochastic_code4: |x| (clamped to 1, NaN to 0) in [M[j], M[j+1]) -- j = how many of the
// floats just below the magnitudes lie below |x| -- gets j + 1 when draw * 2**-DRAW_BITS * gap < |x| - M[j].
static inline __m512i encode4_stochastic(__m512 x, __m512i draws) {
    __m512 magnitude = _mm512_max_ps(_mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_abs_ps(x)), _mm512_setzero_ps());
    __m512i j = count_below(magnitude, FLOORS_BELOW4, FLOORS4, @SHIFT4@, @FIRST_BUCKET4@);
    __m512 lower = _mm512_permutexvar_ps(j, _mm512_load_ps(LOWER4));
    __m512 gap = _mm512_permutexvar_ps(j, _mm512_load_ps(GAPS4));
    __m512 threshold = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(draws), _mm512_set1_ps(1.0f / (1 << @DRAW_BITS@))), gap);
    __mmask16 up = _mm512_cmp_ps_mask(threshold, _mm512_sub_ps(magnitude, lower), _CMP_LT_OQ);
    j = _mm512_mask_add_epi32(j, up, j, _mm512_set1_epi32(1));
    return _mm512_mask_sub_epi32(j, negative(x), _mm512_set1_epi32(15), j);
}

static inline __mmask64 bytes(int64_t remaining) {
    return remaining >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << remaining) - 1);
}

static inline float inverse(float absmax) { return 1.0f / (absmax > 0.0f ? absmax : 1.0f); }

// codec.to_unit's exact power-of-two rescaling of blocks whose absmax is below TINY_ABSMAX (so that
// the inverse stays finite): the rare block's buffer [first, last) is scaled in place; returns the
// absmax to invert.
static inline float rescaled_absmax(float absmax, float *buffer, int64_t first, int64_t last) {
    if (!(absmax < @TINY_ABSMAX@)) return absmax;  // NaN too
    for (int64_t i = first; i < last; i++) buffer[i] *= @RESCALE@;
    return absmax * @RESCALE@;
}

// |m| as float bits: for floats without a sign, integer order is float order, and NaN (whatever
// its payload) is above infinity, so an integer maximum returns NaN as torch's amax does.
static inline __m512i magnitude_bits(__m512 m) {
    return _mm512_and_si512(_mm512_castps_si512(m), _mm512_set1_epi32(INT32_MAX));
}

static inline float as_float(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// Steps `length` elements starting at p/g whose codes start at `codes`; `buffer` holds >= length floats.
// Pass 1 over 64 elements (fewer in a block's last chunk, Whole = false: masked loads and stores):
// decode, rule, parameter stored, new momentum to the block buffer, running max of |m| as bits.
template <bool Whole, class Scalars>
static inline void update_chunk8(float *p, const float *g, const uint8_t *codes, int64_t length, __m512 old_scale,
                                 float *buffer, __m512i *largest, const Scalars &coefficients, int64_t *skipped) {
    __m512 decoded[4];
    decode8x64(Whole ? _mm512_loadu_si512(codes) : _mm512_maskz_loadu_epi8(bytes(length), codes), decoded);
    for (int quarter = 0; quarter < 4 && (Whole || 16 * quarter < length); quarter++) {
        int at = 16 * quarter;
        __mmask16 k = Whole ? (__mmask16)0xFFFF : lanes(length - at);
        __m512 m = _mm512_mul_ps(decoded[quarter], old_scale);
        __m512 param = Whole ? _mm512_loadu_ps(p + at) : _mm512_maskz_loadu_ps(k, p + at);
        __m512 grad = Whole ? _mm512_loadu_ps(g + at) : _mm512_maskz_loadu_ps(k, g + at);
        *skipped += count_skipped(k, lion_rule(param, grad, m, coefficients));
        if (Whole) _mm512_storeu_ps(p + at, param);
        else _mm512_mask_storeu_ps(p + at, k, param);
        _mm512_storeu_ps(buffer + at, m);
        *largest = _mm512_mask_max_epu32(*largest, k, *largest, magnitude_bits(m));
    }
}

// Pass 2 over 64 elements: 4 x 16 codes, packed to bytes and put back in memory order.
template <bool Whole>
static inline void encode_chunk8(const float *buffer, __m512 to_unit, uint8_t *codes, int64_t length) {
    __m512i j[4];
    __mmask16 sign[4];
    for (int quarter = 0; quarter < 4; quarter++) {
        __m512 x = _mm512_mul_ps(_mm512_loadu_ps(buffer + 16 * quarter), to_unit);
        j[quarter] = magnitude_index8(x);
        sign[quarter] = negative(x);
    }
    __m512i packed = _mm512_packus_epi16(_mm512_packs_epi32(j[0], j[1]), _mm512_packs_epi32(j[2], j[3]));
    packed = _mm512_permutexvar_epi8(_mm512_load_si512(PLANE_ORDER), packed);
    __mmask64 negatives = _mm512_kunpackd(_mm512_kunpackw(sign[3], sign[2]), _mm512_kunpackw(sign[1], sign[0]));
    packed = _mm512_mask_sub_epi8(packed, negatives, _mm512_set1_epi8((char)255), packed);  // 255 - j
    if (Whole) _mm512_storeu_si512(codes, packed);
    else _mm512_mask_storeu_epi8(codes, bytes(length), packed);
}

// Steps `length` elements starting at p/g whose codes start at `codes`; `buffer` holds >= length
// floats rounded up to 64. Returns the new absmax.
template <class Scalars>
static float step_block8(float *p, const float *g, uint8_t *codes, float absmax, int64_t length, float *buffer,
                         const Scalars &coefficients, int64_t *skipped) {
    __m512 old_scale = _mm512_set1_ps(absmax);
    __m512i largest = _mm512_setzero_si512();
    int64_t whole = length & ~(int64_t)63;
    for (int64_t i = 0; i < whole; i += 64)
        update_chunk8<true>(p + i, g + i, codes + i, 64, old_scale, buffer + i, &largest, coefficients, skipped);
    if (whole < length)
        update_chunk8<false>(p + whole, g + whole, codes + whole, length - whole, old_scale, buffer + whole, &largest,
                             coefficients, skipped);
    float new_absmax = as_float(_mm512_reduce_max_epu32(largest));
    __m512 to_unit = _mm512_set1_ps(inverse(rescaled_absmax(new_absmax, buffer, 0, length)));
    for (int64_t i = 0; i < length; i += 64) {
        // The next block (it follows in memory) is fetched while this one encodes, which reads none.
        for (int line = 0; line < 4; line++) {
            _mm_prefetch((const char *)(p + length + i + 16 * line), _MM_HINT_T0);
            _mm_prefetch((const char *)(g + length + i + 16 * line), _MM_HINT_T0);
        }
        _mm_prefetch((const char *)(codes + length + i), _MM_HINT_T0);
        if (i + 64 <= length) encode_chunk8<true>(buffer + i, to_unit, codes + i, 64);
        else encode_chunk8<false>(buffer + i, to_unit, codes + i, length - i);
    }
    return new_absmax;
}

// As step_block8 for 4-bit codes: the low nibbles' elements [0, half), then the high nibbles'
// [half, length), each in memory order; the buffer holds the low ones at 0, the high ones at `high`.
// key < 0: codes rounded to nearest; else stochastically, with the draws of key and the element
// indices from `first_index` (the block's first element's, row * cols + column).
template <class Scalars>
static float step_block4(float *p, const float *g, uint8_t *codes, float absmax, int64_t length, float *buffer,
                         const Scalars &coefficients, int64_t *skipped, int64_t first_index, int64_t key) {
    const __m512 table = _mm512_mul_ps(_mm512_load_ps(DECODE4), _mm512_set1_ps(absmax));  // decode(c) * absmax
    int64_t half = (length + 1) / 2, high = (half + 15) & ~(int64_t)15;
    __m512i largest = _mm512_setzero_si512();
    for (int part = 0; part < 2; part++) {
        int64_t first = part ? half : 0, count = part ? length - half : half;
        float *part_buffer = buffer + (part ? high : 0);
        for (int64_t i = 0; i < half; i += 16) {
            __mmask16 k = lanes(count - i), k_bytes = lanes(half - i);  // a padding element is 0
            __m512i byte = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k_bytes, codes + i));
            __m512i nibble = part ? _mm512_srli_epi32(byte, 4) : _mm512_and_si512(byte, _mm512_set1_epi32(15));
            __m512 m = _mm512_permutexvar_ps(nibble, table);
            __m512 param = _mm512_maskz_loadu_ps(k, p + first + i), grad = _mm512_maskz_loadu_ps(k, g + first + i);
            *skipped += count_skipped(k, lion_rule(param, grad, m, coefficients));
            _mm512_mask_storeu_ps(p + first + i, k, param);
            _mm512_storeu_ps(part_buffer + i, m);
            largest = _mm512_mask_max_epu32(largest, k_bytes, largest, magnitude_bits(m));
        }
    }
    float new_absmax = as_float(_mm512_reduce_max_epu32(largest));
    float unit_absmax = rescaled_absmax(new_absmax, buffer, 0, half);
    rescaled_absmax(new_absmax, buffer, high, high + half);
    __m512 to_unit = _mm512_set1_ps(inverse(unit_absmax));
    for (int64_t i = 0; i < half; i += 16) {
        for (int line = 0; line < 2; line++) {  // the next block, as in step_block8
            _mm_prefetch((const char *)(p + length + 2 * i + 16 * line), _MM_HINT_T0);
            _mm_prefetch((const char *)(g + length + 2 * i + 16 * line), _MM_HINT_T0);
        }
        if (i % 64 == 0) _mm_prefetch((const char *)(codes + half + i), _MM_HINT_T0);
        __m512 low_unit = _mm512_mul_ps(_mm512_loadu_ps(buffer + i), to_unit);
        __m512 high_unit = _mm512_mul_ps(_mm512_loadu_ps(buffer + high + i), to_unit);
        __m512i low, high_nibble;
        if (key < 0) {
            low = encode4(low_unit);
            high_nibble = encode4(high_unit);
        } else {
            low = encode4_stochastic(low_unit, code_draws16(first_index + i, (uint32_t)key));
            high_nibble = encode4_stochastic(high_unit, code_draws16(first_index + half + i, (uint32_t)key));
        }
        __m512i byte = _mm512_or_si512(low, _mm512_slli_epi32(high_nibble, 4));
        _mm_mask_storeu_epi8(codes + i, lanes(half - i), _mm512_cvtepi32_epi8(byte));
    }
    return new_absmax;
}

// The step on `count` parameters of one param group (the same block size, bits and scalars):
// parameter t is (rows[t], cols[t]) fp32 with its codes and absmax in the layout above; skipped[t]
// (zero on entry) receives how many of its gradient elements were NaN or inf. Each of
// `threads` OpenMP threads steps a contiguous share of every parameter's blocks, parameter after
// parameter, with no barrier in between. Returns nonzero, having stepped nothing, if a block
// buffer could not be allocated.
template <class Scalars>
static int step_parameters(int count, float *const *params, const float *const *grads, uint8_t *const *codes,
                           float *const *absmaxes, const int64_t *rows, const int64_t *cols, int64_t block_size,
                           int bits, const Scalars &coefficients, int threads, int64_t *skipped, const int64_t *keys,
                           const int64_t *first_indices) {
    int64_t codes_per_block = bits == 8 ? block_size : block_size / 2, longest = 0;
    for (int t = 0; t < count; t++) longest = cols[t] > longest ? cols[t] : longest;
    longest = longest < block_size ? longest : block_size;  // no block is longer than its row
    int64_t buffer_floats = (longest + 64 + 15) & ~(int64_t)15;  // whole 64-element chunks
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *buffer = (float *)aligned_alloc(64, buffer_floats * sizeof(float));
        if (buffer) memset(buffer, 0, buffer_floats * sizeof(float));  // lanes past a block's end stay finite
        else {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier
        int64_t team = omp_get_num_threads(), member = omp_get_thread_num();
        for (int t = 0; t < count && !failed; t++) {
            int64_t blocks_per_row = (cols[t] + block_size - 1) / block_size;
            int64_t codes_per_row = bits == 8 ? cols[t] : (cols[t] + 1) / 2;
            int64_t total = rows[t] * blocks_per_row;
            int64_t first = total * member / team, stop = total * (member + 1) / team;
            int64_t row = first / blocks_per_row, block = first % blocks_per_row, skipped_here = 0;
            for (int64_t index = first; index < stop; index++) {  // this thread's share, row by row
                int64_t start = block * block_size;
                int64_t length = cols[t] - start < block_size ? cols[t] - start : block_size;
                float *p = params[t] + row * cols[t] + start;
                const float *g = grads[t] + row * cols[t] + start;
                uint8_t *c = codes[t] + row * codes_per_row + block * codes_per_block;
                float *a = absmaxes[t] + index;
                *a = bits == 8 ? step_block8(p, g, c, *a, length, buffer, coefficients, &skipped_here)
                               : step_block4(p, g, c, *a, length, buffer, coefficients, &skipped_here,
                                             first_indices[t] + row * cols[t] + start, keys[t]);
                if (++block == blocks_per_row) {
                    block = 0;
                    row++;
                }
            }
            if (skipped_here) {
#pragma omp atomic
                skipped[t] += skipped_here;
            }
        }
        free(buffer);
    }
    return failed;
}

// cautious: the masked rule (rule.py), step_size being every parameter's cautious step size.
// keys[t]: -1, parameter t's 4-bit codes rounded to nearest; else the 32-bit codec.rounding_key of
// their stochastic rounding, first_indices[t] the index of its first element in its whole tensor
// (a shard's offset; codec.code_draws). 8 bits: always nearest.
extern "C" int quantized_lion_step(int count, float *const *params, const float *const *grads, uint8_t *const *codes,
                                   float *const *absmaxes, const int64_t *rows, const int64_t *cols,
                                   int64_t block_size, int bits, int cautious, float step_size, float update_weight,
                                   float momentum_weight, float decay, int threads, int64_t *skipped,
                                   const int64_t *keys, const int64_t *first_indices) {
    auto step = [&](const auto &coefficients) {
        return step_parameters(count, params, grads, codes, absmaxes, rows, cols, block_size, bits, coefficients,
                               threads, skipped, keys, first_indices);
    };
    return cautious ? with_coefficients<true>(step_size, update_weight, momentum_weight, decay, step)
                    : with_coefficients<false>(step_size, update_weight, momentum_weight, decay, step);
}
