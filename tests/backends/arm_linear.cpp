// The kernels' zhiyin_linear as a program, for test_kernels_on_arm.py to build for 64-bit ARM and run under qemu: reads
// from stdin the header (type, n, k, m, bytes of the weight, floats of the scale, bytes of the group scales) and the
// arrays (weight, scale, groups, x [m, k] float32); writes y [m, n] float32, computed on 2 threads.
#include <cstdio>
#include <vector>

#include "kernels.cpp"

template <typename T>
static std::vector<T> read(int64_t count) {
    std::vector<T> v(count);
    if (count && std::fread(v.data(), sizeof(T), count, stdin) != size_t(count)) std::exit(2);
    return v;
}

int main() {
    const auto header = read<int64_t>(7);
    const int64_t type = header[0], n = header[1], k = header[2], m = header[3];
    const auto weight = read<uint8_t>(header[4]);
    const auto scale = read<float>(header[5]);
    const auto groups = read<int8_t>(header[6]);
    const auto x = read<float>(m * k);
    const Linear w{weight.data(), scale.empty() ? nullptr : scale.data(), groups.empty() ? nullptr : groups.data(),
                   n, k, int32_t(type), 0, nullptr};
    std::vector<float> y(m * n);
    zhiyin_linear(&w, x.data(), y.data(), m, 2);
    std::fwrite(y.data(), sizeof(float), y.size(), stdout);
}
