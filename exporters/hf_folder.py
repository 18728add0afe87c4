"""The student as a timm / Hugging Face folder (docs/export.md): weights and config.json written by timm's own
save_for_hf, so that `timm.create_model("local-dir:DIR", pretrained=True)` (or `hf-hub:USER/NAME` after an upload)
builds it and `timm.data.resolve_data_config` gives its preprocessing; the model card; export.json, what the export
is and what it measured; and the upload to the hub.
"""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

import timm
from huggingface_hub import EvalResult, HfApi, ModelCardData, constants, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from timm.data import ImageNetInfo
from timm.models import save_for_hf
from torch import nn

from analysis.runs import selects_all
from common import hub
from common.errors import UserError
from common.files import human_size
from data.sources import is_hub_name
from data.transforms import IMAGENET_MEAN, IMAGENET_STD

EXPORT_FILE = "export.json"
# pretrained_cfg keys that describe timm's own ImageNet weights of the architecture, not this student's
PROVENANCE = ("url", "hf_hub_id", "tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "source", "file")
VERSIONS = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "safetensors", "huggingface_hub")


# ----------------------------------------------------------------------------------------------------------------------
# The timm folder


def timm_crop_pct(image_size: int) -> float:
    """The crop_pct with which timm's eval transform reproduces data.eval_transform exactly: data resizes the short
    side to round(size / 0.875), timm to floor(size / crop_pct). 0.875 where the two agree (224 -> 256); else a
    crop_pct halfway inside the interval that floors to the same size (32 -> 37: 32 / 37.5)."""
    resize = round(image_size / 0.875)
    return 0.875 if math.floor(image_size / 0.875) == resize else image_size / (resize + 0.5)


def data_config(image_size: int) -> dict:
    """The preprocessing the student was validated and tested with (data.eval_transform), in timm's words."""
    return {"input_size": (3, image_size, image_size), "interpolation": "bilinear", "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "crop_pct": timm_crop_pct(image_size), "crop_mode": "center"}  # fmt: skip


def class_descriptions(class_names: list[str]) -> dict[str, str]:
    """Readable names of the classes that are ImageNet-1k WordNet ids (mini-imagenet's and the synthetic set's are)."""
    info = ImageNetInfo()
    known = set(info.label_names())
    return {name: info.label_name_to_description(name) for name in class_names if name in known}


def save_timm_folder(model: nn.Module, class_names: list[str], image_size: int, folder: Path, license: str) -> None:
    """model.safetensors and config.json (architecture, num_classes, label_names and label_descriptions, and the
    pretrained_cfg of data_config) through timm.models.save_for_hf."""
    model.pretrained_cfg = {key: value for key, value in model.pretrained_cfg.items() if key not in PROVENANCE}
    labels = {"label_names": list(class_names), "label_descriptions": class_descriptions(class_names)}
    save_for_hf(model, folder, model_config={**labels, "pretrained_cfg": {"license": license}},
                safe_serialization=True, data_config=data_config(image_size))  # fmt: skip


def load_timm_folder(folder: Path) -> nn.Module:
    """The exported student, built by timm from the folder alone, in eval mode."""
    if not (Path(folder) / "model.safetensors").is_file():
        raise UserError(f"{folder} holds no model.safetensors (exported without the timm format); export the run "
                        "again with --format timm,onnx.")  # fmt: skip
    return timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True).eval()


def is_export(folder) -> bool:
    return (Path(folder) / EXPORT_FILE).is_file()


def read_export(folder) -> dict:
    """export.json of an exported folder, or one line on what is wrong with it."""
    path = Path(folder) / EXPORT_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(
            f"cannot read {path} ({err}); export the run again (python export.py RUN --overwrite)."
        ) from None
    if not isinstance(info, dict) or not {"config", "image_size", "source", "data", "budget"} <= info.keys():
        raise UserError(f"{path} is not an export's record; export the run again (python export.py RUN --overwrite).")
    return info


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# ----------------------------------------------------------------------------------------------------------------------
# The model card


def dataset_source(data: str) -> tuple[str, bool]:
    """(the card's dataset type, whether it names a hub dataset). Local folders and the synthetic set are not on the
    hub; data.load_data reads a `user/name` that is not a local path from the hub."""
    if data.startswith("synthetic"):
        return "synthetic", False
    return (data, True) if is_hub_name(data) else ("imagefolder", False)


# config.json fields that name a local file or folder: never published as they are (docs/security.md)
PATH_FIELDS = ("teacher_checkpoint", "teacher_weights", "student_weights", "cache_dir", "reward_twin", "policy")


def dataset_name(data: str, given: str | None = None) -> str:
    """What the card and export.json call the data: a hub name or the synthetic set as given, a local folder by
    `given` (--dataset-name) or its own name, never its path."""
    if dataset_source(data)[0] != "imagefolder":
        return data
    return given or Path(data).expanduser().resolve().name


def public_path(value: str | None) -> str | None:
    """A path as a reader may see it: relative ones that stay below the working folder, and `~/...`, as they are;
    any other (absolute, `..`, `~user`) as a placeholder that keeps only the file's name."""
    if not value:
        return value
    path = Path(value)
    if value.startswith("~/") or (not path.is_absolute() and not value.startswith("~") and ".." not in path.parts):
        return value
    return f"PATH/TO/{path.name}"


def public_config(config: dict, run_name: str, data_name: str) -> dict:
    """A run's config.json as the card and export.json publish it: the run by its folder's name, a local data folder
    by `data_name`, every other local path by public_path; the absolute paths stay in the run folder."""
    public = {**config, "out": run_name, "resume": None, "data": data_name}
    for name in PATH_FIELDS:
        if isinstance(public.get(name), str):
            public[name] = public_path(public[name])
    return public


def card_metadata(info: dict, repo_id: str | None) -> str:
    """The YAML block the hub reads: library, tags, license, datasets, and the test figures as a model-index."""
    dataset_type = info.get("data_source") or dataset_source(info["data"])[0]  # exports of before had no source
    on_hub = dataset_type not in ("synthetic", "imagefolder")
    results = [
        EvalResult(task_type="image-classification", dataset_type=dataset_type, dataset_name=info["data"],
                   dataset_split="test", metric_type=kind, metric_name=name, metric_value=round(info["test"][key], 2))
        for key, kind, name in (("top1", "accuracy", "top-1 accuracy"), ("top5", "top_5_accuracy", "top-5 accuracy"))
    ]  # fmt: skip
    card = ModelCardData(
        library_name="timm" if "timm" in info["formats"] else "onnx",
        license=info["license"],
        tags=["image-classification", "knowledge-distillation", *info["formats"]],
        datasets=[info["data"]] if on_hub else None,
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        model_name=(repo_id or info["name"]).split("/")[-1],
        eval_results=results,
    )
    return card.to_yaml()


def describe_teacher(config: dict) -> str:
    if config["label_weight"] == 1:
        return "none (trained on the labels only)"
    if config.get("teacher_checkpoint"):
        return f"a checkpoint of this repo's train_student.py, `{config['teacher_checkpoint']}`"
    weights = f", weights from `{config['teacher_weights']}`" if config.get("teacher_weights") else ""
    return f"`{config['teacher']}` (timm, ImageNet-1k weights{weights}), logits sliced to the data's classes"


def describe_curriculum(config: dict) -> str:
    if config.get("script") == "train_student_rl.py":
        agent = "Thompson-sampling bandit" if config.get("agent") == "bandit" else "PPO agent"
        return (
            f"`{config['curriculum']}`, the target difficulty chosen each epoch by a {agent} "
            f"(fraction {config['fraction']})"
        )
    if selects_all(config):
        return "none (all training data every epoch)"
    return f"`{config['curriculum']}` (fraction {config['fraction']}, target {config['target']})"


def model_card(info: dict, repo_id: str | None = None, latency_lines: tuple[str, ...] = ()) -> str:
    """README.md of the folder: the hub's metadata block, then what the student is, how it was trained, its test
    figures, how to use it (timm and onnxruntime), the ONNX check and `latency_lines`, the classes and the versions."""
    config, test, budget, source = info["config"], info["test"], info["budget"], info["source"]
    size = info["image_size"]
    proxies = ", the RL agent's proxy runs included" if config.get("script") == "train_student_rl.py" else ""
    lines = ["---", card_metadata(info, repo_id), "---", f"# {info['name']}: {info['description']}", ""]
    lines += [
        f"A `{info['model']}` ({info['parameters'] / 1e6:.2f}M parameters, {len(info['class_names'])} classes, "
        f"{size} px) trained by `{config.get('script', 'train_student.py')}` of the kd-curriculum code (knowledge "
        f"distillation with a curriculum) and exported by its `export.py` from `{source['checkpoint']}` "
        f"(epoch {source['epoch']} of {config['epochs']}) of the run `{source['run']}`.",
        "",
        "## Results",
        "",
        f"| Split | Images | Top-1 | Top-5 | Checkpoint |\n|---|---|---|---|---|\n| {info['data']} test | "
        f"{test['images']} | {test['top1']:.2f}% | {test['top5']:.2f}% | {source['checkpoint']} (epoch "
        f"{source['epoch']}) |",
        "",
        f"Figures of this checkpoint, {test['source']}. Budget: {budget['epochs_trained']} epochs, "
        f"{budget['samples']:,} training samples ({budget['epochs_of_data']:.2f} epochs of the {budget['train_size']:,}"
        f" training images{proxies}).",
        "",
        "## Training",
        "",
        f"- Data: `{info['data']}`",
        f"- Teacher: {describe_teacher(config)}",
        f"- Loss: `{config['label_weight']}` x CE(labels) + `{1 - config['label_weight']:g}` x T^2 KL(teacher || "
        f"student), temperature T = `{config['temperature']}`",
        f"- Curriculum: {describe_curriculum(config)}",
        f"- Epochs: {config['epochs']} (Adam, lr {config['lr']}, batch {config['batch_size']}, cosine schedule); "
        f"seed {config['seed']}",
        f"- Command: `{info['command']}`",
        "",
    ]
    lines += usage_section(info, repo_id) + onnx_section(info, latency_lines) + classes_section(info)
    lines += ["## Versions", "", ", ".join(f"{name} {version}" for name, version in info["versions"].items()), ""]
    return "\n".join(lines)


def usage_section(info: dict, repo_id: str | None) -> list[str]:
    lines = ["## Use", ""]
    if "timm" in info["formats"]:
        source = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
        lines += [
            "```python",
            "import timm",
            "from PIL import Image",
            "",
            f'model = timm.create_model("{source}", pretrained=True).eval()',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
            'logits = model(transform(Image.open("image.jpg").convert("RGB"))[None])',
            "```",
            "",
        ]
    config = data_config(info["image_size"])
    lines += [
        f"Preprocessing (as in training's evaluation): resize the short side to {round(info['image_size'] / 0.875)} "
        f"px (bilinear), centre-crop {info['image_size']} px, scale to [0, 1], normalise with mean {config['mean']} "
        f"and std {config['std']}.",
        "",
    ]
    return lines


def onnx_section(info: dict, latency_lines: tuple[str, ...]) -> list[str]:
    if "onnx" not in info["formats"]:
        return []
    onnx, check = info["onnx"], info["onnx"]["check"]
    return [
        "## ONNX",
        "",
        f"`model.onnx` (opset {onnx['opset']}, {onnx['exporter']}): input `{onnx['input']}` float32 "
        f"[batch, 3, {info['image_size']}, {info['image_size']}], output `{onnx['output']}` [batch, "
        f"{len(info['class_names'])}]; the batch axis is dynamic, and the file's metadata holds the class names and "
        "the preprocessing.",
        "",
        "```python",
        "import onnxruntime",
        "",
        'session = onnxruntime.InferenceSession("model.onnx")',
        f'logits = session.run(["{onnx["output"]}"], {{"{onnx["input"]}": images}})[0]  # images: preprocessed, NCHW',
        "```",
        "",
        f"Checked against the torch model with onnxruntime on {check['images']} test views: max |logit difference| "
        f"{check['max_abs_logit_difference']:.2e} (bound {check['bound']:.2e}), top-1 agreement "
        f"{check['top1_agreement']:.2%}.",
        "",
        *latency_lines,
        "",
    ]


def classes_section(info: dict) -> list[str]:
    descriptions = class_descriptions(info["class_names"])
    lines = ["## Classes", "", "| Index | WordNet id | Name |", "|---|---|---|"]
    for index, name in enumerate(info["class_names"]):
        lines.append(f"| {index} | {name} | {descriptions.get(name, '').split(',')[0]} |")
    return [*lines, ""]


# ----------------------------------------------------------------------------------------------------------------------
# The upload


def check_push(repo_id: str, folder: Path) -> None:
    """Before any work: a valid repo id, a token, and a reachable hub; each missing one is one line."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"--push-to-hub {repo_id}: {err} Name the repo as user/name.") from None
    if get_token() is None:
        raise UserError(
            "--push-to-hub needs a Hugging Face token with write access: run `hf auth login` or set HF_TOKEN "
            "(the export itself needs none; drop --push-to-hub to export only)."
        )
    if hub.offline():
        raise UserError(
            f"--push-to-hub: the hub ({constants.ENDPOINT}) cannot be reached (or HF_HUB_OFFLINE is set); export "
            f"without --push-to-hub and upload the folder where there is network: hf upload {repo_id} {folder}"
        )


def upload_summary(folder: Path, repo_id: str, private: bool, card_lines: int = 3) -> str:
    """What --push-to-hub is about to publish: the files and their sizes, and the first lines of the card's text
    (after the metadata block): its title and what it says the student is and where it came from."""
    files = sorted(path for path in Path(folder).rglob("*") if path.is_file())
    listed = ", ".join(f"{path.relative_to(folder)} ({human_size(path.stat().st_size)})" for path in files)
    card = (Path(folder) / "README.md").read_text().split("\n---\n", 1)[-1].strip().splitlines()[:card_lines]
    return "\n".join([f"uploading to {repo_id} ({'private' if private else 'public'}): {listed}",
                      "the model card begins:", *(f"    {line}".rstrip() for line in card)])  # fmt: skip


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Upload the exported folder as one commit (created with the repo if need be); the commit's URL. A failure is
    one line: upload_folder commits only once every file is uploaded, so nothing of the export is in the repo."""
    api = HfApi(library_name="timm", library_version=timm.__version__)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=folder, commit_message="Add a distilled student")
    except Exception as err:  # HTTP and connection errors (requests or httpx, by huggingface_hub version): one line
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the upload to {repo_id} failed ({why}); no commit of the export was made. {folder} is complete: "
            f"upload it with hf upload {repo_id} {folder}"
        ) from None
    return commit.commit_url
