"""What a first GPU run must not meet, checked on the CPU: a step or evaluation loop that waits for the device
(host_syncs.py counts the entry points), bf16 autocast with the teacher online, replayed and scoring from the
training steps, channels-last forced, the teacher's logits in fp32, and the GPU defaults (fused Adam, workers from
the cores, a too-small /dev/shm named)."""

import pytest
import timm
import torch

import models
from analysis.host_syncs import HostSyncCounter
from common.cli import parse_config
from common.errors import UserError, run_cli
from conftest import TINY
from training import devices, loop
from training.config import TrainConfig
from training.experiment import Experiment, TrainingRun
from training.teacher import body_dtype as teacher_body_dtype
from training.teacher import compile_teacher, place_teacher


def test_the_counter_counts_a_read_back_inside_a_loop_only():
    """accuracy() reads a value back (.item()): counted inside the loop, not after it; the same read in a test file
    is not the project's."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3), torch.arange(8) % 3), 4)
    with HostSyncCounter(torch.device("cpu")) as counter:
        for logits, labels in loader:
            loop.accuracy(logits, labels)
            logits.sum().item()  # this file's: not counted
        loop.accuracy(logits, labels)  # after the loop: the documented after-epoch reduction
    assert counter.count == 2 and all(place.startswith("training/loop.py:") for place in counter.places), counter.places
    assert torch.Tensor.item is torch._C.TensorBase.item  # everything patched is put back


def test_the_counter_counts_waits_inside_torch_by_caller_and_allows_unfused_adams_step():
    """A wait made by torch itself (a distribution's argument check reads its verdict back) is counted at torch's
    line; the unfused Adam's CPU step count (ALLOWED) is not."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), 4)
    with HostSyncCounter(torch.device("cpu")) as counter:
        for (inputs,) in loader:
            model(inputs).sum().backward()
            torch.distributions.Categorical(logits=model(inputs), validate_args=True)
            optimizer.step()
    assert counter.count == 2, counter.places
    assert all(place.startswith("torch/distributions/distribution.py:") for place in counter.places), counter.places


def counted_epoch(experiment: Experiment) -> tuple[list, list]:
    """One epoch of a fresh TrainingRun, counting host syncs: the dtypes of the teacher's outputs, and
    (training, dtype, channels-last input) of each student call."""
    run, teacher_calls, student_calls = TrainingRun(experiment), [], []
    hooks = [
        experiment.teacher.register_forward_hook(lambda module, args, out: teacher_calls.append(out.dtype)),
        run.student.register_forward_hook(lambda module, args, out: student_calls.append(
            (module.training, out.dtype, args[0].is_contiguous(memory_format=torch.channels_last)))),
    ]  # fmt: skip
    with HostSyncCounter(experiment.device) as counter:
        row = run.train_epoch()
    for hook in hooks:
        hook.remove()
    assert counter.count == 0, counter.places
    assert row["train_loss"] > 0 and row["val_loss"] > 0  # finite: train_epoch refuses NaN
    assert run.student.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    return teacher_calls, student_calls


@pytest.mark.slow
def test_amp_epochs_online_replayed_and_scored_from_the_steps_wait_for_nothing(tiny_teacher, tmp_path):
    """Two one-epoch runs of one experiment under bf16 autocast, channels-last forced, with the uint8 path (device-side
    normalisation) and a loader worker: the first runs the teacher on every batch and fills the view store, the
    second replays it; both score from the training steps. Nothing inside their step and evaluation loops would wait
    for a GPU."""
    argv = ["--data", TINY, "--batch-size", "32", "--workers", "1", "--device", "cpu", "--student", "resnet10t",
            "--teacher-checkpoint", str(tiny_teacher), "--cache-dir", str(tmp_path), "--loader", "uint8", "--amp",
            "--memory-format", "channels_last", "--label-weight", "0.5", "--curriculum", "adaptive",
            "--score-source", "train-pass", "--teacher-logits", "replay"]  # fmt: skip
    with Experiment(parse_config(TrainConfig, argv)) as experiment:
        # the training batches come from a worker; the stored evaluation views need none (a memory copy)
        assert experiment.train_loader.num_workers == 1 and experiment.val_loader.num_workers == 0
        first, students = counted_epoch(experiment)
        second, more_students = counted_epoch(experiment)
    assert first and set(first) == {torch.float32}  # online on each batch (and the scoring pass): fp32 logits
    assert second == []  # the second run replayed every view (its scores came from the scoring cache)
    students += more_students
    assert {dtype for training, dtype, _ in students if training} == {torch.bfloat16}  # steps under autocast
    assert all(channels_last for _, _, channels_last in students)  # NHWC batches, training and evaluation


def test_the_teachers_logits_stay_fp32_under_autocast():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5).eval()
    teacher = models.with_fp32_head(model)
    images = torch.randn(4, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher(images)
        features = model.forward_features(images)
    assert logits.dtype == torch.float32
    assert not torch.equal(logits, logits.bfloat16().float())  # not bf16 values in an fp32 tensor
    with torch.inference_mode():
        expected = model.forward_head(features.float())  # bf16 features, fp32 head
        full = model(images)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert (logits - full).abs().max() < 0.05 * full.abs().max()  # close to the fp32 teacher: bf16 features only


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050"])
def test_under_bf16_autocast_the_teachers_body_weights_are_bf16_and_its_head_stays_fp32(name):
    """models.cast_body, as place_teacher applies it under --amp: the body's convolutions in bf16 (autocast no longer
    re-casts them every call), whatever the head holds (MobileNetV3's has a convolution), and the same logits."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).eval()
    teacher = models.with_fp32_head(model)
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = teacher(images)
    placement = devices.Placement.on(torch.device("cpu"), torch.bfloat16)
    placed = place_teacher(teacher, placement, 32)
    head = {id(p) for p in model.get_classifier().parameters()} | {
        id(p) for p in getattr(model, "conv_head", torch.nn.Identity()).parameters()}  # fmt: skip
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            expected = torch.float32 if id(module.weight) in head else torch.bfloat16
            assert module.weight.dtype == expected, module
        elif isinstance(module, torch.nn.BatchNorm2d):
            assert module.weight.dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = placed(images)
    assert after.dtype == torch.float32
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # autocast ran those layers in bf16 before, too
    assert teacher_body_dtype(devices.Placement.on(torch.device("cpu"), torch.float16)) is None  # fp16: fp32 weights


def test_the_teacher_with_its_fp32_head_compiles_into_one_graph_for_batches_of_any_size():
    """What --compile does to the teacher on a GPU (training/teacher.py compile_teacher), with aot_eager here: no
    graph break at the fp32 head, one graph for batches of 9 and 8 marked dynamic, the eager teacher's logits."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    teacher = models.with_fp32_head(timm.create_model("resnet10t", num_classes=5)).eval().requires_grad_(False)
    compiled = torch.compile(teacher, backend="aot_eager")
    for size in (9, 8):
        images = torch.randn(size, 3, 32, 32)
        torch._dynamo.maybe_mark_dynamic(images, 0)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits, expected = compiled(images), teacher(images)
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert compile_teacher(teacher, True, torch.device("cpu")) is teacher  # a CPU run keeps the teacher eager


def test_the_teachers_head_runs_without_tf32_and_puts_the_setting_back():
    """The fp32 head is fp32 on a GPU too: TF32 (on for the rest of the run) is off inside it."""
    model = timm.create_model("resnet10t", num_classes=5).eval()
    seen = []
    model.get_classifier().register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))  # fmt: skip
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    devices.allow_tf32(True)
    try:
        with torch.inference_mode():
            models.with_fp32_head(model)(torch.randn(2, 3, 32, 32))
        assert seen == [(False, False)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_gpu_defaults(monkeypatch):
    parameter = [torch.nn.Parameter(torch.zeros(2))]
    assert devices.adam(parameter, torch.device("cuda"), lr=1e-3, weight_decay=0).defaults["fused"] is True
    assert not devices.adam(parameter, torch.device("cpu"), lr=1e-3, weight_decay=0).defaults["fused"]
    assert devices.memory_format_for(torch.device("cuda")) == torch.channels_last
    assert devices.memory_format_for(torch.device("cpu")) == torch.contiguous_format
    assert devices.memory_format_for(torch.device("cpu"), "channels_last") == torch.channels_last
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    devices.allow_tf32(False)  # --no-tf32
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    devices.allow_tf32(True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    for cores, processes, workers in ((64, 1, 16), (32, 4, 7), (2, 1, 1), (1, 1, 0)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, cores=cores: set(range(cores)), raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
        assert devices.default_workers() == devices.default_workers(None) == workers
        assert devices.default_workers(3) == 3  # a given --workers stands


def test_a_too_small_shared_memory_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch):
    devices.check_shared_memory(10**6, workers=4, folder=str(tmp_path))  # fits
    devices.check_shared_memory(10**18, workers=0, folder=str(tmp_path))  # no workers: no shared memory used
    with pytest.raises(UserError, match=r"docker run --shm-size .* lower --workers"):
        devices.check_shared_memory(10**18, workers=4, folder=str(tmp_path))
    # what one rank's workers need fits; what the node's 8 ranks need together does not
    batch = devices.shutil.disk_usage(tmp_path).free // (3 * (4 * devices.PREFETCH + 1))
    devices.check_shared_memory(batch, workers=4, folder=str(tmp_path))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(UserError, match=r"8 processes x 4 loader workers"):
        devices.check_shared_memory(batch, workers=4, folder=str(tmp_path))

    def bus_error():  # torch's words (torch/csrc/DataLoader.cpp) for a worker that found no room in /dev/shm
        raise RuntimeError(
            "DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that dataloader's workers "
            "are out of shared memory. Please try to raise your shared memory limit."
        )

    with pytest.raises(SystemExit) as stop:
        run_cli(bus_error)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shm-size" in err and "--workers" in err


def test_one_progress_bar_per_run(monkeypatch):
    """torchrun's ranks other than 0 draw no progress bar (8 bars over one terminal were noise)."""
    monkeypatch.setenv("RANK", "1")
    assert loop.progress_off() is True
    monkeypatch.setenv("RANK", "0")
    assert loop.progress_off() is None  # tqdm's own rule: shown on a terminal
