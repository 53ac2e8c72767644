"""Build or run this bundle's TensorRT engine (edgec; TensorRT 10 or 11).

    python3 build_engine.py                  # model.onnx -> model.engine (trt_build.json)
    python3 build_engine.py --run [in.npz]   # run model.engine on in.npz or random inputs

The network is strongly typed: precision comes from the Cast and Q/DQ nodes in model.onnx;
no FP16/INT8 builder flags are set (TensorRT 11 removed them).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_settings(path=None):
    path = path or os.path.join(HERE, "trt_build.json")
    return json.load(open(path)) if os.path.exists(path) else {}


def network_flags(trt):
    """STRONGLY_TYPED: needed on TensorRT 10.x, accepted and ignored (always on) by 11.x."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def profile_shapes(name, dims, settings):
    """(min, opt, max) of one input; `dims` holds -1 where a dim is dynamic."""
    r = settings.get("shape_ranges", {}).get(name)
    if r is not None:
        return tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])
    if any(d < 0 for d in dims[1:]):
        raise SystemExit("input %r has dynamic dims %s; add its min/opt/max to shape_ranges "
                         "in trt_build.json" % (name, list(dims)))
    mx = int(settings.get("max_batch", 1))
    lo, opt, hi = list(dims), list(dims), list(dims)
    if dims and dims[0] < 0:
        lo[0], opt[0], hi[0] = 1, 1, mx
    return tuple(lo), tuple(opt), tuple(hi)


def build_engine(onnx_path, engine_path, settings):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for e in errors:
            print("ONNX parser error:", e, file=sys.stderr)
        raise RuntimeError("TensorRT could not parse %s: %s" % (onnx_path, "; ".join(errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                 int(settings.get("workspace_bytes", 1 << 30)))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in tuple(t.shape))]
    if dynamic:
        profile = builder.create_optimization_profile()
        for t in dynamic:
            lo, opt, hi = profile_shapes(t.name, tuple(t.shape), settings)
            print("profile %s: min %s opt %s max %s" % (t.name, lo, opt, hi))
            profile.set_shape(t.name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if settings.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine; see the log above")
    with open(engine_path, "wb") as f:
        f.write(engine)
    return engine_path


class _Gpu:
    """Device buffers through torch (when it sees a GPU) or cuda-python."""

    def __init__(self):
        self.torch, self.rt, self.keep = None, None, []
        try:
            import torch
            self.torch = torch if torch.cuda.is_available() else None
        except ImportError:
            pass
        if self.torch is None:
            try:
                from cuda.bindings import runtime as rt
            except ImportError:
                try:
                    from cuda import cudart as rt
                except ImportError:
                    raise RuntimeError("running a TensorRT engine needs torch with CUDA or "
                                       "cuda-python: pip install cuda-python") from None
            self.rt, self.stream = rt, self._ck(rt.cudaStreamCreate())

    def _ck(self, res):
        if int(res[0]) != 0:
            raise RuntimeError("CUDA error %s" % (res[0],))
        return res[1] if len(res) > 1 else None

    def put(self, arr):
        if self.torch is not None:
            self.keep.append(self.torch.from_numpy(arr).cuda())
            return self.keep[-1].data_ptr()
        self.keep.append(self._ck(self.rt.cudaMalloc(max(arr.nbytes, 1))))
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ck(self.rt.cudaMemcpy(self.keep[-1], arr.ctypes.data, arr.nbytes, kind))
        return self.keep[-1]

    def handle(self):
        t = self.torch
        return t.cuda.current_stream().cuda_stream if t is not None else int(self.stream)

    def get(self, ptr, out):
        if self.torch is not None:
            self.torch.cuda.synchronize()
            out[...] = [k for k in self.keep if k.data_ptr() == ptr][0].cpu().numpy()
            return out
        self._ck(self.rt.cudaStreamSynchronize(self.stream))
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ck(self.rt.cudaMemcpy(out.ctypes.data, ptr, out.nbytes, kind))
        return out

    def free(self):
        for ptr in self.keep if self.rt is not None else ():
            self.rt.cudaFree(ptr)
        self.keep = []


class EngineRunner:
    """Deserializes model.engine and runs it on numpy inputs (outputs by tensor name)."""

    def __init__(self, engine_path):
        import tensorrt as trt

        self.trt, self.logger = trt, trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError("cannot deserialize %s (built by another TensorRT version or "
                               "for another GPU?)" % engine_path)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.input_names = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if mode(n) != trt.TensorIOMode.INPUT]
        self.gpu = _Gpu()

    def dtype(self, name):
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def random_inputs(self, seed=0):
        rng, feeds = np.random.default_rng(seed), {}
        for n in self.input_names:
            shape = tuple(self.engine.get_tensor_shape(n))
            if any(d < 0 for d in shape):  # the profile's opt shape
                shape = tuple(self.engine.get_tensor_profile_shape(n, 0)[1])
            x = rng.random(shape) if self.dtype(n).kind == "f" else rng.integers(0, 2, shape)
            feeds[n] = x.astype(self.dtype(n))
        return feeds

    def run(self, feeds):
        for n in self.input_names:
            arr = np.ascontiguousarray(feeds[n], dtype=self.dtype(n))
            self.context.set_input_shape(n, arr.shape)
            self.context.set_tensor_address(n, self.gpu.put(arr))
        outs = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise RuntimeError("output %r has a data-dependent shape %s; this runner "
                                   "does not allocate those" % (n, shape))
            host = np.empty(shape, self.dtype(n))
            outs[n] = (self.gpu.put(host), host)
            self.context.set_tensor_address(n, outs[n][0])
        if not self.context.execute_async_v3(self.gpu.handle()):
            raise RuntimeError("TensorRT execution failed; see the log above")
        result = {n: self.gpu.get(ptr, host) for n, (ptr, host) in outs.items()}
        self.gpu.free()
        return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", default=os.path.join(HERE, "model.onnx"))
    ap.add_argument("--engine", default=os.path.join(HERE, "model.engine"))
    ap.add_argument("--settings", default=None, help="JSON settings (default trt_build.json)")
    ap.add_argument("--run", nargs="?", const="", default=None, metavar="INPUTS.npz",
                    help="run the engine on an .npz of inputs (random when omitted)")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    if args.run is None:
        print("wrote", build_engine(args.onnx, args.engine, load_settings(args.settings)))
        return 0
    runner = EngineRunner(args.engine)
    feeds = runner.random_inputs()
    if args.run:
        feeds.update(dict(np.load(args.run)))
    for spec in args.input:
        name, _, path = spec.partition("=")
        feeds[name] = np.load(path)
    outs = runner.run(feeds)
    times = []
    for _ in range(max(args.iters, 1)):
        t = time.perf_counter()
        runner.run(feeds)
        times.append(1e3 * (time.perf_counter() - t))
    for name, value in outs.items():
        print(name, value.shape, value.dtype)
    print("latency median %.3f ms, min %.3f ms over %d runs (host copies included)"
          % (float(np.median(times)), min(times), len(times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
