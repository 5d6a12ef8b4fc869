"""Does a C++ exception crash this process? One raising call, for gpu_check.sh's crash diagnosis.

    python scripts/throw_probe.py {torch,native,native-after-cuda}

torch: a failing TORCH_CHECK inside libtorch (a bad view). native: a failing argument check in this
project's extension (csrc/ops.cpp), on CPU tensors. native-after-cuda: the same after a CUDA tensor
has been made (CUDA initialised). Exit 0 when the call raised RuntimeError and Python caught it; a
crash shows as the signal's exit status (139 for SIGSEGV); 1 when the call did not raise or the probe
could not run (it says why).
"""
import sys

import torch

PROBES = ("torch", "native", "native-after-cuda")


def raising_call(probe: str) -> None:
    if probe == "torch":
        torch.ones(2).view(3)
        return
    import convbert_kernels

    convbert_kernels.load_backends("native")
    if convbert_kernels.backend_load_error("native"):
        raise SystemExit(f"the native backend did not load: {convbert_kernels.backend_load_error('native')}")
    if probe == "native-after-cuda":
        if not torch.cuda.is_available():
            raise SystemExit("native-after-cuda needs a GPU")
        torch.ones(1, device="cuda")
    values = torch.ones(1, 2, 3)
    # padding_l = 5 with K = 3: refused by check_padding_l before any kernel runs
    torch.ops.convbert_kernels.native_dynamic_fwd(values, torch.ones(1, 2, 3), 1, 5, None, None, True)


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in PROBES:
        print(f"usage: throw_probe.py {{{','.join(PROBES)}}}", file=sys.stderr)
        return 2
    try:
        raising_call(sys.argv[1])
    except RuntimeError as err:
        print(f"{sys.argv[1]}: raised and caught: {str(err).splitlines()[0]}")
        return 0
    print(f"{sys.argv[1]}: the call did not raise")
    return 1


if __name__ == "__main__":
    sys.exit(main())
