"""bench.py runs on a CPU with a tiny config and reports both loops (not a speed test); its profile
classifies ops and kernels and adds up; it refuses to overwrite an earlier bench or to start on a
bad input."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY
from torch.autograd import DeviceType
from torch.autograd.profiler_util import Kernel
from torch.profiler import ProfilerActivity

import bench
from data import DataConfig, MatrixSampler
from trainer import TrainConfig, Trainer
from utils.config import UserError, load_config
from utils.profiling import (
    CLASSES,
    SAMPLER_RANGE,
    _device_work,
    attribute,
    breakdown,
    in_range,
    op_class,
)


def test_bench_runs_and_reports(tmp_path):
    pytest.importorskip("transformers")
    overrides = [o for o in TINY if not o.startswith("train.steps")]
    cfg = load_config(
        bench.BenchConfig,
        ROOT / "configs/bench.yaml",
        [
            "bench.train_config=configs/train_tiny.yaml",
            f"bench.overrides={json.dumps(overrides)}",
            f"bench.variants={json.dumps(['train.precision=bf16'])}",
            "bench.warmup_steps=1",
            "bench.steps=3",
            f"bench.out_dir={tmp_path}",
        ],
    )
    summary = bench.main(cfg)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["runs"].keys() == summary["runs"].keys()
    assert len(summary["runs"]) == 3  # ours, one variant, the baseline
    for run in summary["runs"].values():
        assert run["steps_per_s"] > 0 and math.isfinite(run["tflops"])
    assert summary["speedup"] > 0 and summary["tflop_per_step"] > 0


# ----------------------------------------------------------------------------------------------
# --bench.profile

# Known names by class: CPU ops, autograd nodes and profiler ranges (torch.optim's, bench.py's),
# then CUDA kernel names as the profiler reports them (templates shortened).
KNOWN_NAMES = {
    "matmul": [
        "aten::addmm",
        "aten::mm",
        "aten::bmm",
        "aten::linear",
        "autograd::engine::evaluate_function: AddmmBackward0",
        "ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1",
        "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn>",
        "triton_tem_fused_mm_0",
    ],
    "attention": [
        "aten::scaled_dot_product_attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>, false>",
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>",
    ],
    "elementwise": [
        "aten::add",
        "aten::add_",
        "aten::mul",
        "aten::gelu_backward",
        "aten::native_layer_norm",
        "aten::copy_",
        "aten::_to_copy",
        "aten::fill_",
        "aten::mse_loss",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>",
        "void at::native::reduce_kernel<512, 1, ReduceOp<float, MeanOps<float, float>>>",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>",
        "triton_poi_fused_add_gelu_0",
        "Memcpy DtoD (Device -> Device)",
    ],
    "optimizer": [
        "aten::_fused_adam_",
        "aten::_foreach_add_",
        "Optimizer.step#Adam.step",
        "Optimizer.zero_grad#Adam.zero_grad",
        "void at::native::multi_tensor_apply_kernel<TensorListMetadata<4>, FusedAdamMathFunctor>",
    ],
    "sampler": ["bench.sampler"],
    "other": [
        "aten::embedding",
        "aten::view",
        "aten::empty_strided",
        "void at::native::(anonymous namespace)::indexSelectLargeIndex<float, long>",
    ],
}


@pytest.mark.parametrize("name, cls", [(n, c) for c, names in KNOWN_NAMES.items() for n in names])
def test_op_class_known_names(name, cls):
    """Catches a pattern that files a known op or kernel in the wrong class: e.g. the fused Adam
    kernel (`multi_tensor_apply`, which contains "mul") as elementwise, a memory-efficient
    attention kernel (`fmha_cutlass...`) as matmul, or `aten::addmm` as an elementwise add."""
    assert op_class(name) == cls


def test_attribute_ranges_and_fallback():
    """Catches work attributed by its own name only: a matmul inside the sampler range or a
    copy inside `Optimizer.step` must count as sampler / optimizer, a math-path SDPA's bmm as
    attention, and an unknown kernel (or an allocation) takes the class of the op around it."""
    assert attribute(["aten::mm", "aten::matmul", SAMPLER_RANGE]) == "sampler"
    assert attribute(["aten::_softmax", "aten::softmax", SAMPLER_RANGE]) == "sampler"
    assert attribute(["aten::copy_", "Optimizer.step#Adam.step"]) == "optimizer"
    sdpa = ["aten::bmm", "aten::_scaled_dot_product_attention_math"]
    assert attribute(sdpa + ["aten::scaled_dot_product_attention"]) == "attention"
    assert attribute(["gemmk1_kernel", "aten::mm", "aten::linear"]) == "matmul"
    assert attribute(["aten::empty_strided", "aten::_to_copy", "aten::to"]) == "elementwise"
    assert attribute(["aten::t", "aten::linear"]) == "matmul"
    assert attribute(["aten::view"]) == "other"


def _event(name, parent=None, device_type=DeviceType.CPU, annotation=False, kernels=(), us=0.0):
    """A stand-in for torch's FunctionEvent with the attributes bench.py reads."""
    return SimpleNamespace(
        name=name,
        cpu_parent=parent,
        device_type=device_type,
        is_user_annotation=annotation,
        kernels=list(kernels),
        device_time_total=us,
        self_cpu_time_total=us,
    )


def test_device_work_skips_annotation_spans():
    """Catches the CUDA path counting a range's GPU-timeline span (gpu_user_annotation, listed
    among the range's kernels) as a kernel, which would double the optimizer's time; and kernels
    not credited to the range that launched them. Fake events: no GPU is needed."""
    step = _event("Optimizer.step#Adam.step", annotation=True)
    step.kernels = [Kernel("Optimizer.step#Adam.step", 0, 30.0)]  # the span, not a kernel
    adam = _event("aten::_fused_adam_", step, kernels=[Kernel("multi_tensor_apply_kernel", 0, 25)])
    mm = _event("aten::mm", kernels=[Kernel("ampere_bf16_s16816gemm_bf16_tn", 0, 40.0)])
    span = _event("Optimizer.step#Adam.step", None, DeviceType.CUDA, annotation=True, us=30.0)
    events = [step, adam, mm, span]
    by_class, by_name = breakdown(_device_work(events))
    assert by_class["optimizer"] == 25 and by_class["matmul"] == 40
    assert sum(by_class.values()) == 65 and set(by_class) == set(CLASSES)
    assert by_name[("multi_tensor_apply_kernel", "optimizer")] == 25


def test_in_range_wraps_then_restores():
    """Catches the sampler left wrapped after profiling (later timings would pay for the range)
    or not wrapped at all (its work would be filed under other)."""
    sampler = MatrixSampler(DataConfig(m=3, n=3, rank=1), "cpu")
    with in_range(sampler, "sample", SAMPLER_RANGE):
        with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
            sampler.sample(2)
    assert "sample" not in vars(sampler)
    assert any(e.name == SAMPLER_RANGE for e in prof.events())


def _bench_cfg(out_dir, *extra):
    overrides = [o for o in TINY if not o.startswith("train.steps")]
    return load_config(
        bench.BenchConfig,
        ROOT / "configs/bench.yaml",
        [
            "bench.train_config=configs/train_tiny.yaml",
            f"bench.overrides={json.dumps(overrides)}",
            "bench.variants=[]",
            "bench.baseline=false",
            "bench.warmup_steps=1",
            "bench.steps=2",
            f"bench.out_dir={out_dir}",
            *extra,
        ],
    )


def test_profile_on_cpu(tmp_path, capsys):
    """Catches a profile that does not add up or misses a class on a CPU: the classes must sum
    to the CPU op time, the sampler (wrapped by bench.py) and the optimizer (torch's range) must
    be found, and the summary must say that busy time here is CPU op time."""
    cfg = _bench_cfg(tmp_path, "bench.profile=true", "bench.profile_steps=2")
    summary = bench.main(cfg)
    (run,) = summary["runs"].values()
    (saved,) = json.loads((tmp_path / "summary.json").read_text())["runs"].values()
    p = run["profile"]
    assert saved["profile"] == p
    assert p["steps"] == 2 and "CPU op time" in p["busy_is"]
    assert set(p["ms_per_step"]) == set(CLASSES)
    assert math.isclose(sum(p["ms_per_step"].values()), p["busy_ms_per_step"], rel_tol=1e-9)
    for cls in ("matmul", "elementwise", "optimizer", "sampler"):
        assert p["ms_per_step"][cls] > 0, cls
    assert 0 < p["busy_ms_per_step"] and 0 < p["wall_ms_per_step"]
    assert p["range_host_ms_per_step"]["sampler"] >= p["ms_per_step"]["sampler"]
    assert p["top"] and p["unlinked_kernel_ms_per_step"] is None
    assert "CPU op time" in capsys.readouterr().out


def test_no_profile_by_default(tmp_path):
    """Catches profiling switched on without asking (it slows every bench by its extra steps)."""
    summary = bench.main(_bench_cfg(tmp_path, "bench.steps=1"))
    assert all("profile" not in r for r in summary["runs"].values())


# ----------------------------------------------------------------------------------------------
# The output folder


def test_refuses_out_dir_with_summary(tmp_path):
    """Catches a bench that overwrites an earlier bench's summary.json (and its config.yaml):
    it must stop with one line naming the folder and the option, having written nothing."""
    (tmp_path / "summary.json").write_text('{"earlier": true}\n')
    with pytest.raises(UserError) as err:
        bench.main(_bench_cfg(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "bench.out_dir" in message and "\n" not in message
    assert (tmp_path / "summary.json").read_text() == '{"earlier": true}\n'
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(
    "bad",
    [
        "bench.train_config=configs/no_such_file.yaml",
        'bench.overrides=["train.no_such_key=1"]',
        'bench.variants=["train.precision=fp64"]',
        'bench.variants=["train.compile=false", "model.no_such_key=1"]',
        'bench.variants=["train.device=cuda:7"]',
    ],
)
def test_checks_inputs_before_writing(tmp_path, bad):
    """Catches a bad input found only after the folder and config.yaml were written (or after
    minutes of timing): a variant is checked only when its turn comes."""
    out_dir = tmp_path / "out"
    cfg = _bench_cfg(out_dir, bad)
    with pytest.raises(UserError):
        bench.main(cfg)
    assert not out_dir.exists()


def test_logging_times_the_log_steps_too(monkeypatch):
    """Catches bench.logging being ignored: with it, train.py's logging work runs every
    log_every steps of the timed loop (what the hidden-progress overhead is measured with)."""
    cfg = load_config(TrainConfig, ROOT / "configs/train_tiny.yaml", [*TINY, "train.log_every=4"])
    calls = []
    monkeypatch.setattr(Trainer, "log_record", lambda self, step, metrics: calls.append(step))
    loop = bench.make_ours(cfg, logging=True)
    bench.time_rounds({"ours": loop}, warmup=0, steps=12, rounds=1)
    assert calls == [4, 8, 12]
    calls.clear()
    loop = bench.make_ours(cfg, logging=False)
    bench.time_rounds({"ours": loop}, warmup=0, steps=12, rounds=1)
    assert calls == []


def test_logging_share_and_figure(tmp_path):
    """Catches the logging time not measured (the hidden-progress overhead would be invisible) and
    a bench with no figure of its loops."""
    overrides = [o for o in TINY if not o.startswith("train.steps")] + ["train.log_every=5"]
    cfg = load_config(
        bench.BenchConfig,
        ROOT / "configs/bench.yaml",
        [
            "bench.train_config=configs/train_tiny.yaml",
            f"bench.overrides={json.dumps(overrides)}",
            f"bench.variants={json.dumps(['train.progress=false'])}",
            "bench.baseline=false",
            "bench.logging=true",
            "bench.warmup_steps=2",
            "bench.steps=10",
            f"bench.out_dir={tmp_path / 'b'}",
        ],
    )
    runs = bench.main(cfg)["runs"]
    assert (tmp_path / "b" / "bench.png").is_file()
    for r in runs.values():
        assert 0 < r["log_share"] < 1 and r["log_ms"] > 0


# ----------------------------------------------------------------------------------------------
# The limit at a loop's own matmuls


def test_the_recorded_matmuls_of_a_step_are_its_forward_and_backward_flops():
    """Catches a recorder that misses the backward (a limit 3× too small, a share 3× too big),
    misses addmm or bmm, or counts the FLOPs of a matmul wrongly: one step's recorded matmuls
    must add up to 6 × tokens × the linear weights plus 12·B·T²·D per layer of attention (and
    the sampler's U Vᵀ)."""
    cfg = load_config(TrainConfig, ROOT / "configs/train_tiny.yaml", TINY)
    loop = bench.make_ours(cfg)
    model = loop.trainer.model
    tokens = cfg.train.batch_size * cfg.data.m * cfg.data.n
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    b, t, d = cfg.train.batch_size, cfg.data.m * cfg.data.n, cfg.model.hidden_size
    attention = 12 * b * t * t * d * cfg.model.num_hidden_layers
    sampler = 2 * b * cfg.data.m * cfg.data.rank * cfg.data.n
    expected = 6 * tokens * linear + attention + sampler
    assert bench.matmul_flops(loop.matmuls) == pytest.approx(expected, rel=1e-9)
    ops = {op.overloadpacket.__name__ for op, _, _ in loop.matmuls}
    assert {"addmm", "mm", "bmm"} <= ops


def test_rounds_interleave_and_report_the_share_of_the_limit(tmp_path):
    """Catches rounds that are not all timed (a median of one), and a share of the limit that
    is not the matmuls' time over the step's time (it must lie in (0, 1.5] on any machine)."""
    runs = bench.main(_bench_cfg(tmp_path, "bench.steps=6", "bench.rounds=3"))["runs"]
    (run,) = runs.values()
    assert len(run["steps_per_s_rounds"]) == 3
    assert 0 < run["share_of_limit"] <= 1.5 and run["matmul_limit_tflops"] > 0
    assert run["steps_per_s"] == pytest.approx(sorted(run["steps_per_s_rounds"])[1])
