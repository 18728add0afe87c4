"""export.py on a trained tiny run: the timm folder rebuilds best.pt exactly, the ONNX file agrees within its printed
bound, the model card holds the run's own figures, evaluate.py takes the export, and bad input (no best.pt, an unknown
format, an unwritable --out, a push without a token, a network or a hub that accepts it) ends in one line."""

import http.server
import json
import shlex
import threading

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
from huggingface_hub import ModelCard, constants
from timm.data import create_transform, resolve_data_config

import bench
import evaluate
import export
import models
import train_student
import train_student_rl
from common import cli, hub
from common.errors import UserError, run_cli
from common.files import load_checkpoint
from conftest import TINY, run_script, train_args
from data.splits import load_data
from data.transforms import eval_transform
from exporters import hf_folder as hf_export
from exporters import onnx_file as onnx_export
from training.config import TrainConfig

NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # a closed port: the hub cannot be reached


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A labels-only resnet10t trained 2 epochs on TINY, exported with the defaults (both formats, best.pt)."""
    run = tmp_path_factory.mktemp("export") / "run"
    train_student.main(train_args(run, "--student", "resnet10t", "--label-weight", 1, epochs=2)[1:])
    result = run_script("export.py", run, "--repeats", 2, "--latency-batch", 8, env={"OMP_NUM_THREADS": "1"})
    return run, run / "export", result.stdout


@pytest.fixture(scope="module")
def views():
    test = load_data(TINY).test
    return torch.stack([test[index][0] for index in range(len(test))])


def checkpoint_logits(path, images) -> torch.Tensor:
    with torch.inference_mode():
        return models.model_from_checkpoint(load_checkpoint(path)).eval()(images)


def test_crop_pct_reproduces_the_eval_resize_at_every_size():
    """timm resizes to floor(size / crop_pct), data.eval_transform to round(size / 0.875)."""
    assert hf_export.timm_crop_pct(224) == 0.875 and hf_export.timm_crop_pct(32) == 32 / 37.5
    for size in range(8, 1025):
        assert int(size / hf_export.timm_crop_pct(size)) == round(size / 0.875), size


def test_the_command_line_rebuilds_a_config_with_every_kind_of_flag():
    """Values that differ from the flags' defaults, switches on and off, quoting; the RL script's resolved --bins and
    --pretrain-episodes (None as flags) as config.json holds them, and no --target (not a flag of that script)."""
    config = train_student_rl.RLConfig(label_weight=0.5, amp=True, normalize_reward=False, target=0.2, out="runs/a b")
    command = cli.command_line(train_student_rl.RLConfig, cli.config_dict(config), "train_student_rl.py")
    assert command == (
        "python train_student_rl.py --label-weight 0.5 --amp --out 'runs/a b' --bins 11 --no-normalize-reward "
        "--pretrain-episodes 30"
    )
    rebuilt = cli.parse_config(train_student_rl.RLConfig, shlex.split(command)[2:])
    assert cli.config_dict(rebuilt) == {**cli.config_dict(config), "target": 0.5}


def test_the_onnx_check_bounds_the_logits_and_counts_near_ties():
    reference = torch.tensor([[4.0, 1.0, 0.0], [1.0, 1.001, -2.0]])  # bound: 1e-3 x 4; the second image a near tie
    flipped = reference + torch.tensor([[0.003, 0.0, 0.0], [0.002, 0.0, 0.0]])  # the near tie flips within the bound
    figures = onnx_export.compare_logits(reference, flipped.numpy())
    assert figures["bound"] == pytest.approx(0.004) and figures["max_abs_logit_difference"] == pytest.approx(
        0.003, abs=1e-6
    )  # float32
    assert (figures["top1_agreement"], figures["near_ties"], figures["images"]) == (0.5, 1, 2)
    onnx_export.check_agreement(figures)  # within the bound: passes
    wrong = reference + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.005]])
    with pytest.raises(UserError, match=r"max \|logit difference\| 0.005 > bound 0.004; top-1 agreement 100.0%"):
        onnx_export.check_agreement(onnx_export.compare_logits(reference, wrong.numpy()))
    small = onnx_export.compare_logits(torch.tensor([[0.2, 0.1]]), np.array([[0.2, 0.1]], dtype=np.float32))
    assert small["bound"] == 1e-3 and small["max_abs_logit_difference"] == 0.0  # logits below 1: the bound stays 1e-3


@pytest.mark.slow
def test_timm_rebuilds_best_pt_from_the_folder(exported, views):
    run, out, stdout = exported
    checkpoint = load_checkpoint(run / "best.pt")
    rebuilt = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.inference_mode():
        assert torch.equal(rebuilt(views), checkpoint_logits(run / "best.pt", views))
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"]) == ("resnet10t", 4)
    assert config["label_names"] == rebuilt.pretrained_cfg["label_names"] == checkpoint["class_names"]
    assert config["label_descriptions"]["n01440764"].startswith("tench")
    transform = create_transform(**resolve_data_config(model=rebuilt))
    source = load_data(TINY).test.source
    for index in range(4):  # timm's preprocessing of the folder is training's evaluation view, to the bit
        assert torch.equal(transform(source.image(index)), eval_transform(32)(source.image(index)))
    assert "timm check: local-dir: rebuilds the student" in stdout


@pytest.mark.slow
def test_onnx_agrees_with_best_pt_within_the_printed_bound(exported, views):
    run, out, stdout = exported
    record = json.loads((out / "export.json").read_text())
    check = record["onnx"]["check"]
    assert check["images"] == 32 and check["top1_agreement"] == 1.0
    reference = checkpoint_logits(run / "best.pt", views)  # the bound: 1e-3 of the logits' scale, at least 1e-3
    assert check["max_abs_logit_difference"] <= check["bound"] == pytest.approx(1e-3 * max(1, reference.abs().max()))
    assert f"max |logit difference| {check['max_abs_logit_difference']:.2e} (bound {check['bound']:.2e})" in stdout
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for images in (views[:1], views[:5], views):  # the batch axis is dynamic
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        reference = checkpoint_logits(run / "best.pt", images).numpy()
        assert logits.shape == reference.shape
        assert np.abs(logits - reference).max() <= check["bound"]
        assert (logits.argmax(1) == reference.argmax(1)).all()
    properties = {prop.key: json.loads(prop.value) for prop in onnx.load(str(out / "model.onnx")).metadata_props}
    assert properties["class_names"] == record["class_names"] and properties["input_size"] == [3, 32, 32]
    latency = record["latency"]
    assert latency["batch"] == 8 and latency["threads"] == 1
    assert all(latency[f"{runtime}_{size}_ms"] > 0 for runtime in ("torch", "onnxruntime") for size in ("1", "batch"))
    assert "| 1 image |" in stdout and "| batch of 8 |" in stdout


@pytest.mark.slow
def test_the_card_holds_the_runs_figures_and_command(exported):
    run, out, _ = exported
    results = json.loads((run / "results.json").read_text())
    run_config = json.loads((run / "config.json").read_text())
    assert load_checkpoint(run / "best.pt")["epoch"] == results["best_epoch"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    figures = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert figures == {"accuracy": round(results["test_acc"], 2), "top_5_accuracy": round(results["test_acc5"], 2)}
    assert (
        f"| {results['test_acc']:.2f}% | {results['test_acc5']:.2f}% | best.pt (epoch {results['best_epoch']}) |"
        in (card.text)
    )
    record = json.loads((out / "export.json").read_text())
    assert f"- Command: `{record['command']}`" in card.text
    script, *argv = shlex.split(record["command"])[1:]
    assert script == "train_student.py"  # the command rebuilds the run's config
    rebuilt = cli.config_dict(cli.parse_config(TrainConfig, argv))
    published = {**run_config, "out": run.name}  # the run by its folder's name: no path of this machine
    assert rebuilt == {key: value for key, value in published.items() if key not in ("script", "world_size")}
    for words in ("- Teacher: none (trained on the labels only)", "temperature T = `4.0`", "seed 0",
                  "Budget: 2 epochs, 192 training samples", f"timm {timm.__version__}",
                  "| 0 | n01440764 | tench |"):  # fmt: skip
        assert words in card.text, words


@pytest.mark.slow
def test_evaluate_and_the_report_take_exports_of_both_checkpoints(exported, tmp_path, capsys):
    run, out, _ = exported
    results = json.loads((run / "results.json").read_text())
    export.main([str(run), "--checkpoint", "last", "--format", "timm", "--out", str(tmp_path / "last")])
    card = ModelCard.load(tmp_path / "last" / "README.md")
    assert [result.metric_value for result in card.data.eval_results] == [
        round(results["last_test_acc"], 2),
        round(results["last_test_acc5"], 2),
    ]
    assert not (tmp_path / "last" / "model.onnx").exists()
    evaluate.main([str(run), str(out), str(tmp_path / "last"), "--no-teacher", "--device", "cpu", "--workers", "0",
                   "--json", str(tmp_path / "table.json"), "--report", str(tmp_path / "report")])  # fmt: skip
    rows = json.loads((tmp_path / "table.json").read_text())
    assert [row["name"] for row in rows] == ["run", "run/export", f"{tmp_path.name}/last"]  # never pooled
    assert "export" not in rows[0]["model"] and rows[1]["model"].endswith(
        f"export of best.pt (epoch {results['best_epoch']})"
    )
    assert rows[1]["top1"] == rows[0]["top1"] == results["test_acc"] and rows[1]["last_top1"] is None
    assert rows[2]["last_top1"] == rows[0]["last_top1"] == results["last_test_acc"] and rows[2]["top1"] is None
    assert rows[1]["budget"] == rows[0]["budget"] == 2.0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "export of last.pt" in report and (tmp_path / "report" / "accuracy.png").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line


def one_line_error(capsys, argv, printed: list | None = None) -> str:
    """The one line export.py ended in (`printed` gets what it wrote to stdout before)."""
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: export.main([str(arg) for arg in argv]))
    out, err = capsys.readouterr()
    if printed is not None:
        printed.append(out)
    lines = [line for line in err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def snapshot(folder) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_bad_input_ends_in_one_line_and_changes_nothing(exported, tmp_path, capsys, monkeypatch):
    run, out, _ = exported
    before = snapshot(out)
    dead = tmp_path / "dead"  # an attempt that died before its first epoch: config.json, no checkpoint
    dead.mkdir()
    (dead / "config.json").write_text((run / "config.json").read_text())
    (tmp_path / "file").write_text("not a folder\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("someone's files\n")
    cases = [
        ([dead], "holds no best.pt"),
        ([dead, "--checkpoint", "last"], "holds no last.pt"),
        ([tmp_path / "other"], "no config.json there"),
        ([run, "--out", tmp_path / "other"], "holds other files than an export"),
        ([run, "--format", "timm,tflite", "--out", tmp_path / "new"], "unknown format tflite"),
        ([run, "--out", tmp_path / "file" / "export"], "under the file"),
        ([run], "already holds an export; pass --overwrite"),
        ([run, "--out", tmp_path / "file"], "is a file"),
        ([run, "--check-images", 0, "--out", tmp_path / "new"], "--check-images must be at least 1"),
        ([run, "--push-to-hub", "not a repo", "--out", tmp_path / "new"], "--push-to-hub not a repo"),
    ]
    for argv, words in cases:
        assert words in one_line_error(capsys, argv)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    line = one_line_error(capsys, [run, "--push-to-hub", "user/student", "--out", tmp_path / "new"])
    assert "hf auth login" in line and "HF_TOKEN" in line
    assert not (tmp_path / "new").exists() and snapshot(out) == before
    assert (tmp_path / "other" / "notes.txt").read_text() == "someone's files\n"


@pytest.mark.slow
def test_a_failed_check_writes_nothing(exported, tmp_path, capsys, monkeypatch):
    """crop_pct 0.875 at 32 px: timm would resize to 36, training's view to 37; the export's own check catches it."""
    run, _, _ = exported
    monkeypatch.setattr(hf_export, "timm_crop_pct", lambda size: 0.875)
    line = one_line_error(capsys, [run, "--format", "timm", "--out", tmp_path / "new"])
    assert "preprocessing" in line and "nothing was written" in line
    assert list(tmp_path.iterdir()) == []  # neither --out nor the folder it was written in


@pytest.mark.slow
def test_push_without_a_network_ends_in_one_line_before_any_work(exported, tmp_path):
    run, _, _ = exported
    env = {**NO_HUB, "HF_TOKEN": "hf_not_a_real_token", "HF_HOME": str(tmp_path / "hf")}
    result = run_script("export.py", run, "--push-to-hub", "user/student", "--out", tmp_path / "new", env=env,
                        check=False)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "cannot be reached" in lines[0] and f"hf upload user/student {tmp_path / 'new'}" in lines[0]
    assert not (tmp_path / "new").exists()


class RefusingHub(http.server.BaseHTTPRequestHandler):
    """A hub on the loopback that creates the repo, then refuses the upload (as a token without write access)."""

    requests: list = []

    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(f"{self.command} {self.path}")
        created = self.path == "/api/repos/create"
        url = f"http://127.0.0.1:{self.server.server_port}/user/student"
        body = json.dumps({"url": url} if created else {"error": "no write access"})
        self.send_response(200 if created else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_HEAD = answer

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_refused_upload_is_one_line_and_never_reported_done(exported, tmp_path, capsys, monkeypatch):
    run, _, _ = exported
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingHub)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # an earlier test's hub.offline() may have set both
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub.offline.cache_clear()  # checked again, against this hub
        argv = [run, "--format", "timm", "--out", tmp_path / "new", "--push-to-hub", "user/student"]
        printed = []
        line = one_line_error(capsys, argv, printed)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        hub.offline.cache_clear()
    assert "the upload to user/student failed" in line and "no commit of the export was made" in line
    created = RefusingHub.requests.index("POST /api/repos/create")  # the repo was made, the upload then refused
    assert len(RefusingHub.requests) > created + 1, RefusingHub.requests
    assert (tmp_path / "new" / "export.json").is_file()  # the export itself is complete, and said so
    out = printed[0]
    assert "uploaded to" not in out
    listed = out.split("uploading to user/student (public): ", 1)[1].splitlines()[0]  # said before the upload
    assert "README.md (" in listed and "export.json (" in listed and "model.safetensors (" in listed
    assert "the model card begins:\n    # run: Student (resnet10t, labels only)\n" in out


@pytest.mark.slow
def test_bench_times_the_onnx_export_of_a_student(tmp_path, capsys):
    out = tmp_path / "export.json"
    bench.main(["--only", "export", "--student", "resnet10t", "--classes", "4", "--latency-batch", "4", "--repeats",
                "1", "--json", str(out)])  # fmt: skip
    figures = json.loads(out.read_text())
    check = figures["export_onnx_check"]
    assert check["max_abs_logit_difference"] <= check["bound"] and check["top1_agreement"] == 1.0
    assert figures["export_batch"] == 4 and figures["export_torch_1_ms"] > 0 and figures["export_onnxruntime_1_ms"] > 0
    assert "| batch of 4 |" in capsys.readouterr().out
