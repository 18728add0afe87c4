"""Unit tests of models.py: the KD loss and the difficulty score against hand-worked values, the WordNet -> ImageNet
mapping, the sliced teacher, local weight files and checkpoint round trips."""

import math

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import models
from common.errors import UserError

LN2, LN3 = math.log(2), math.log(3)


def softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(x) for x in logits]
    return [e / sum(exps) for e in exps]


def cross_entropy(logits: list[float], label: int) -> float:
    """-log softmax(s)_y = log sum_j exp(s_j) - s_y."""
    return math.log(sum(math.exp(x) for x in logits)) - logits[label]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_i p_i (log p_i - log q_i)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def kd_by_hand(s: list[float], t: list[float], y: int, w: float, temp: float) -> float:
    soft = kl(softmax([x / temp for x in t]), softmax([x / temp for x in s]))
    return w * cross_entropy(s, y) + (1 - w) * temp**2 * soft


def kd(s, t, y, w, temp):
    t = None if t is None else torch.tensor(t)
    return models.kd_loss(torch.tensor(s), t, torch.tensor(y), w, temp).item()


# ----------------------------------------------------------------------------------------------------------------------
# kd_loss


# Two classes, student s = [0, 0], teacher t = [4 ln 3, 0], label 0.
#   CE = log(e^0 + e^0) - 0 = ln 2.
#   T = 4: t/T = [ln 3, 0] -> p_t = [3/4, 1/4]; s/T = [0, 0] -> p_s = [1/2, 1/2]
#          KL = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 3/4 ln 3 - 3/4 ln 2 - 1/4 ln 2 = 3/4 ln 3 - ln 2 ~= 0.130812
#          soft term = T^2 KL = 16 (3/4 ln 3 - ln 2) = 12 ln 3 - 16 ln 2 ~= 2.093
#   T = 1: p_t = [81/82, 1/82], p_s = [1/2, 1/2]
#          KL = 81/82 ln(162/82) + 1/82 ln(2/82) = 81/82 ln 81 + ln 2 - ln 82 = 4 (81/82) ln 3 + ln 2 - ln 82
TWO_CLASS_KL = {4.0: 16 * (0.75 * LN3 - LN2), 1.0: 4 * 81 / 82 * LN3 + LN2 - math.log(82)}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("label_weight", [1.0, 0.6, 0.0])
def test_kd_loss_two_classes_closed_form(label_weight, temperature):
    expected = label_weight * LN2 + (1 - label_weight) * TWO_CLASS_KL[temperature]
    got = kd([[0.0, 0.0]], [[4 * LN3, 0.0]], [0], label_weight, temperature)
    assert got == pytest.approx(expected, rel=1e-6)


def test_kd_loss_two_classes_numbers():
    # The closed forms above, as numbers: 0.6 ln 2 + 0.4 * 2.0930 = 0.41589 + 0.83720 = 1.25309 at T = 4.
    assert TWO_CLASS_KL[4.0] == pytest.approx(2.092992, abs=1e-6)
    assert kd([[0.0, 0.0]], [[4 * LN3, 0.0]], [0], 0.6, 4.0) == pytest.approx(1.253086, abs=1e-5)


# Three classes, s = [1, 2, 0], t = [2, 0, 1], label 2.
#   CE = log(e + e^2 + 1) - 0 = log(11.10733) ~= 2.40761.
#   T = 1: p_t = softmax([2, 0, 1]) = [0.66524, 0.09003, 0.24473], p_s = [0.24473, 0.66524, 0.09003]
#          KL = 0.66524 ln(0.66524/0.24473) + 0.09003 ln(0.09003/0.66524) + 0.24473 ln(0.24473/0.09003) = 0.7299.
#   T = 4: the same with logits / 4, times T^2 = 16.
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("label_weight", [1.0, 0.6, 0.0])
def test_kd_loss_three_classes(label_weight, temperature):
    s, t, y = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], 2
    expected = kd_by_hand(s, t, y, label_weight, temperature)
    assert kd([s], [t], [y], label_weight, temperature) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_three_classes_numbers():
    s, t = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0]
    assert cross_entropy(s, 2) == pytest.approx(math.log(math.e + math.e**2 + 1))
    assert kd([s], [t], [2], 1.0, 1.0) == pytest.approx(2.407606, abs=1e-5)
    # With (a, b, c) = softmax([2, 1, 0]) = (0.66524, 0.24473, 0.09003): p_t = [a, c, b] and p_s = [b, a, c], so
    # KL = a ln(a / b) + c ln(c / a) + b ln(b / c) = 0.66524 * 1.0 - 0.09003 * 2.0 + 0.24473 * 1.0 = 0.729908.
    a, b, c = softmax([2.0, 1.0, 0.0])
    by_hand = a * math.log(a / b) + c * math.log(c / a) + b * math.log(b / c)
    assert kd([s], [t], [2], 0.0, 1.0) == pytest.approx(by_hand, rel=1e-5)
    assert by_hand == pytest.approx(0.729908, abs=1e-5)


def test_kd_loss_labels_only_needs_no_teacher():
    assert kd([[0.0, 0.0]], None, [1], 1.0, 4.0) == pytest.approx(LN2, rel=1e-6)


def test_kd_loss_sample_weights():
    # the two samples of test_kd_loss_is_batch_mean, weighted 3 and 1: (3 x (0.6 ln 2 + 0.4 x 2.0930) + 0.6 ln 2) / 2
    student, teacher = torch.zeros(2, 2), torch.tensor([[4 * LN3, 0.0], [0.0, 0.0]])
    got = models.kd_loss(student, teacher, torch.tensor([0, 1]), 0.6, 4.0, sample_weights=torch.tensor([3.0, 1.0]))
    expected = (3 * (0.6 * LN2 + 0.4 * TWO_CLASS_KL[4.0]) + 0.6 * LN2) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)
    ones = models.kd_loss(student, teacher, torch.tensor([0, 1]), 0.6, 4.0, sample_weights=torch.ones(2))
    assert ones.item() == pytest.approx(models.kd_loss(student, teacher, torch.tensor([0, 1]), 0.6, 4.0).item())


def test_kd_loss_is_batch_mean():
    # Sample 1: the two-class case at T = 4; sample 2: s = [0, 0], t = [0, 0], label 1 -> CE = ln 2, KL = 0.
    # Mean over the batch: (0.6 ln 2 + 0.4 * 2.0930 + 0.6 ln 2) / 2.
    got = kd([[0.0, 0.0], [0.0, 0.0]], [[4 * LN3, 0.0], [0.0, 0.0]], [0, 1], 0.6, 4.0)
    expected = (0.6 * LN2 + 0.4 * TWO_CLASS_KL[4.0] + 0.6 * LN2) / 2
    assert got == pytest.approx(expected, rel=1e-6)

    s = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [-2.0, 1.0, 0.0]]
    y = [2, 0]
    expected = sum(kd_by_hand(s[i], t[i], y[i], 0.6, 4.0) for i in range(2)) / 2
    assert kd(s, t, y, 0.6, 4.0) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_has_gradient_for_student():
    student = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    models.kd_loss(student, torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([2]), 0.0, 4.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------------
# sample_difficulty / difficulty_components


def difficulty(teacher, student):
    teacher, student = torch.tensor(teacher, dtype=torch.float32), torch.tensor(student, dtype=torch.float32)
    parts = {name: value.tolist() for name, value in models.difficulty_components(teacher, student).items()}
    return parts, models.sample_difficulty(teacher, student).tolist()


def test_difficulty_confident_matching_teacher_is_exactly_zero():
    # p_t = p_s = [1, e^-1e4, e^-1e4] = [1, 0, 0] in float64: conf = 1 - 1 = 0, H = 0, KL = 0, D = 0.
    parts, score = difficulty([[1e4, 0.0, 0.0]], [[1e4, 0.0, 0.0]])
    assert parts == {"conf": [0.0], "entropy": [0.0], "kl": [0.0]}
    assert score == [0.0]


@pytest.mark.parametrize("classes", [2, 3, 10, 100])
def test_difficulty_uniform_teacher(classes):
    # p_t = 1/K everywhere: H = -K (1/K) log(1/K) = log K -> entropy term 1; conf = 1 - 1/K; student = teacher: KL = 0.
    parts, score = difficulty([[0.0] * classes], [[0.0] * classes])
    assert parts["entropy"] == [1.0]
    assert parts["conf"][0] == pytest.approx(1 - 1 / classes, abs=1e-7)
    assert parts["kl"] == [0.0]
    assert score[0] == pytest.approx(0.3 * (1 - 1 / classes) + 0.3, abs=1e-6)


def test_difficulty_far_student_clips_kl_at_one():
    # Teacher one-hot on class 0, student puts e^-1e4 there: KL = -log p_s(0) = 1e4 -> 1e4 / 5 clipped to 1.
    parts, score = difficulty([[1e4, 0.0, 0.0]], [[0.0, 1e4, 0.0]])
    assert parts == {"conf": [0.0], "entropy": [0.0], "kl": [1.0]}
    assert score[0] == pytest.approx(0.4)


def test_difficulty_one_hot_teacher_uniform_student():
    # KL([1, 0, 0] || [1/3, 1/3, 1/3]) = 1 * ln(1 / (1/3)) = ln 3 ~= 1.0986 -> D_kl = ln 3 / 5 ~= 0.21972 (not clipped).
    parts, score = difficulty([[1e4, 0.0, 0.0]], [[0.0, 0.0, 0.0]])
    assert parts["kl"][0] == pytest.approx(LN3 / 5, rel=1e-6)
    assert parts["conf"] == [0.0] and parts["entropy"] == [0.0]
    assert score[0] == pytest.approx(0.4 * LN3 / 5, rel=1e-6)


def test_difficulty_moderate_case_by_hand():
    # Teacher [ln 3, 0] -> p_t = [3/4, 1/4]; student [0, 0] -> p_s = [1/2, 1/2]; K = 2.
    #   conf    = 1 - 3/4 = 0.25
    #   entropy = (-3/4 ln 3/4 - 1/4 ln 1/4) / ln 2 = (2 ln 2 - 3/4 ln 3) / ln 2 = 2 - 0.75 log2(3) ~= 0.811278
    #   kl      = (3/4 ln 3 - ln 2) / 5 ~= 0.130812 / 5 ~= 0.0261624
    #   D       = 0.3 * 0.25 + 0.3 * 0.811278 + 0.4 * 0.0261624 ~= 0.328848
    parts, score = difficulty([[LN3, 0.0]], [[0.0, 0.0]])
    entropy = 2 - 0.75 * math.log2(3)
    kl_term = (0.75 * LN3 - LN2) / 5
    assert parts["conf"][0] == pytest.approx(0.25, rel=1e-6)
    assert parts["entropy"][0] == pytest.approx(entropy, rel=1e-6)
    assert parts["kl"][0] == pytest.approx(kl_term, rel=1e-5)
    assert score[0] == pytest.approx(0.3 * 0.25 + 0.3 * entropy + 0.4 * kl_term, rel=1e-6)
    assert score[0] == pytest.approx(0.328848, abs=1e-5)


def test_difficulty_kl_direction_is_teacher_to_student():
    # KL(p_t || p_s) with p_t = [3/4, 1/4], p_s = [1/2, 1/2] is 3/4 ln 3 - ln 2 ~= 0.1308, while the reverse
    # KL(p_s || p_t) = 1/2 ln(2/3) + 1/2 ln 2 = ln 2 - 1/2 ln 3 ~= 0.1438: the two are distinguishable.
    parts, _ = difficulty([[LN3, 0.0]], [[0.0, 0.0]])
    assert parts["kl"][0] == pytest.approx((0.75 * LN3 - LN2) / 5, rel=1e-5)
    assert parts["kl"][0] != pytest.approx((LN2 - 0.5 * LN3) / 5, rel=1e-3)


def test_difficulty_is_weighted_sum_of_components():
    generator = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(64, 10, generator=generator) * 3, torch.randn(64, 10, generator=generator) * 3
    parts = models.difficulty_components(teacher, student)
    expected = 0.3 * parts["conf"] + 0.3 * parts["entropy"] + 0.4 * parts["kl"]
    torch.testing.assert_close(models.sample_difficulty(teacher, student), expected)
    assert models.sample_difficulty(teacher, student).shape == (64,)


def check_in_unit_range(teacher: torch.Tensor, student: torch.Tensor) -> None:
    score = models.sample_difficulty(teacher, student)
    assert score.shape == (teacher.shape[0],)
    assert torch.isfinite(score).all()
    assert (score >= 0).all() and (score <= 1).all()
    for value in models.difficulty_components(teacher, student).values():
        assert torch.isfinite(value).all() and (value >= 0).all() and (value <= 1).all()


def test_difficulty_range_random_and_extreme_logits():
    generator = torch.Generator().manual_seed(1)
    for scale in (0.1, 1.0, 10.0, 1e3):
        check_in_unit_range(
            torch.randn(128, 7, generator=generator) * scale, torch.randn(128, 7, generator=generator) * scale
        )
    extremes = torch.tensor([-1e4, 0.0, 1e4])
    teacher = extremes[torch.randint(0, 3, (256, 5), generator=generator)]
    student = extremes[torch.randint(0, 3, (256, 5), generator=generator)]
    check_in_unit_range(teacher, student)
    check_in_unit_range(teacher.half(), student.half())
    # Opposite extremes: the KL is about 2e4 and must clip to exactly 1.
    parts = models.difficulty_components(torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([[-1e4, 1e4, 0.0]]))
    assert parts["kl"].item() == 1.0


logit = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_subnormal=False)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda k: st.tuples(st.lists(logit, min_size=k, max_size=k), st.lists(logit, min_size=k, max_size=k))
    )
)
def test_difficulty_in_unit_range_property(pair):
    teacher, student = torch.tensor([pair[0]]), torch.tensor([pair[1]])
    check_in_unit_range(teacher, student)
    # Student equal to the teacher: KL is 0, so D = 0.3 conf + 0.3 entropy only.
    assert models.difficulty_components(teacher, teacher)["kl"].item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# WordNet ids -> ImageNet-1k indices, sliced teacher


def test_imagenet_class_indices_known_ids():
    assert models.imagenet_class_indices(["n01440764", "n01443537", "n15075141"]) == [0, 1, 999]
    assert models.imagenet_class_indices(["n15075141", "n01440764"]) == [999, 0]  # order follows the input


def test_imagenet_class_indices_unknown_id_is_user_error():
    with pytest.raises(UserError, match="--teacher-checkpoint") as info:
        models.imagenet_class_indices(["n01440764", "n99999999"])
    assert "n99999999" in str(info.value)


def test_class_indices_of_any_wider_teacher():
    teacher_classes = ["n01440764", "n01443537", "n01484850", "n01491361"]
    assert models.class_indices(["n01491361", "n01440764"], teacher_classes, "a teacher") == [3, 0]
    with pytest.raises(UserError, match="--teacher-checkpoint") as info:
        models.class_indices(["n01440764", "n15075141"], teacher_classes, "a teacher")
    assert "n15075141" in str(info.value) and "4 classes of a teacher" in str(info.value)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=1000).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_sliced_teacher_returns_the_chosen_columns(resnet18, images):
    indices = [999, 0, 1, 500]
    with torch.no_grad():
        full = resnet18(images)
        sliced = models.SlicedTeacher(resnet18, indices)(images)
    assert sliced.shape == (2, 4)
    torch.testing.assert_close(sliced, full[:, indices])


# ----------------------------------------------------------------------------------------------------------------------
# create_model, local weight files, checkpoints


@pytest.fixture(scope="module")
def weights_file(resnet18, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "w.pth"
    torch.save(resnet18.state_dict(), path)
    return path


def test_create_model_loads_local_weights_file(resnet18, weights_file):
    loaded = models.create_model("resnet18", 1000, weights_file=str(weights_file))
    torch.testing.assert_close(loaded.conv1.weight, resnet18.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(loaded.fc.weight, resnet18.fc.weight, rtol=0, atol=0)


def test_create_model_without_weights_has_requested_head():
    model = models.create_model("resnet18", 7).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_create_model_unknown_name_is_user_error():
    with pytest.raises(UserError, match="no_such_model"):
        models.create_model("no_such_model", 10)


def test_create_model_bad_weights_file_is_user_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="broken.pth"):
        models.create_model("resnet18", 1000, weights_file=str(path))


def test_imagenet_teacher_from_local_weights(resnet18, weights_file, images):
    teacher = models.imagenet_teacher("resnet18", ["n01440764", "n01443537"], weights_file=str(weights_file)).eval()
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), resnet18(images)[:, [0, 1]])


def test_imagenet_teacher_rejects_unknown_class_before_loading(tmp_path):
    # The weights file does not exist: the class check must fail first, with the checkpoint hint.
    with pytest.raises(UserError, match="--teacher-checkpoint"):
        models.imagenet_teacher("resnet18", ["n99999999"], weights_file=str(tmp_path / "missing.pth"))


def test_model_from_checkpoint_rebuilds_identical_model(images):
    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=3).eval()
    checkpoint = {
        "model": "resnet18",
        "class_names": ["n01440764", "n01443537", "n15075141"],
        "state_dict": model.state_dict(),
    }
    rebuilt = models.model_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), model(images), rtol=0, atol=0)
