# Sourced by the GPU scripts (from the repository root): puts the CUDA toolkit's libraries, where
# NVRTC (libnvrtc.so.13) lives, on the library path; the kernels are compiled with it on first use.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    if [[ -d "$d" ]]; then
        export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
done
