"""Metrics against hand-computed confusion matrices."""

import math

import pytest
import torch

from pointdr2.engine.metrics import ConfusionMatrix, accuracy_metrics, segmentation_metrics


def test_confusion_matrix_counts_match_hand_count():
    # true: 0 0 0 1 1 2 ; pred: 0 1 0 1 2 2
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 0, 1, 2, 2])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    expected = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert torch.equal(cm.matrix, expected)
    m = cm.accuracy()
    assert m["oa"] == pytest.approx(100 * 4 / 6)
    # per class: 2/3, 1/2, 1/1
    assert m["acc_per_class"] == pytest.approx([200 / 3, 50.0, 100.0])
    assert m["macc"] == pytest.approx((200 / 3 + 50 + 100) / 3)


def test_update_from_logits_uses_argmax_over_class_dim():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])  # argmax 1, 0
    cm = ConfusionMatrix(3)
    cm.update(logits, torch.tensor([1, 2]), class_dim=1)
    assert cm.matrix[1, 1] == 1 and cm.matrix[2, 0] == 1 and cm.matrix.sum() == 2
    seg = torch.zeros(1, 3, 4)
    seg[0, 2] = 1.0  # every point predicted class 2
    cm2 = ConfusionMatrix(3)
    cm2.update(seg, torch.tensor([[2, 2, 0, 1]]), class_dim=1)
    assert cm2.matrix[:, 2].tolist() == [1, 1, 2]


def test_segmentation_metrics_hand_computed():
    cm = torch.tensor([[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 4, 0], [0, 0, 0, 0]])
    m = segmentation_metrics(cm)
    # IoU_k = tp / (row + col - tp)
    iou0 = 5 / (6 + 7 - 5)
    iou1 = 3 / (6 + 4 - 3)
    iou2 = 4 / (4 + 5 - 4)
    assert m["iou_per_class"][:3] == pytest.approx([100 * iou0, 100 * iou1, 100 * iou2])
    assert math.isnan(m["iou_per_class"][3])  # absent from ground truth and predictions
    assert m["miou"] == pytest.approx(100 * (iou0 + iou1 + iou2) / 3)
    assert m["oa"] == pytest.approx(100 * 12 / 16)
    assert m["macc"] == pytest.approx(100 * (5 / 6 + 3 / 6 + 4 / 4) / 3)


def test_predicted_but_absent_class_counts_as_zero_iou():
    cm = torch.tensor([[3, 1], [0, 0]])  # class 1 never true but predicted once
    m = segmentation_metrics(cm)
    assert m["iou_per_class"] == pytest.approx([75.0, 0.0])
    assert m["miou"] == pytest.approx(37.5)
    assert accuracy_metrics(cm)["macc"] == pytest.approx(75.0)  # mAcc over classes present in the truth


def test_ignore_index_and_bad_labels():
    cm = ConfusionMatrix(2, ignore_index=-1)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, -1, 1]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="target labels must lie in"):
        ConfusionMatrix(2).update(torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="square"):
        accuracy_metrics(torch.zeros(2, 3))


# --------------------------------------------------------------------------- part segmentation
PARTS = ((0, 1), (2, 3, 4))  # two categories: parts 0-1 and 2-4


def test_part_metrics_match_a_hand_computed_example():
    from pointdr2.engine.metrics import PartSegmentationMetrics

    m = PartSegmentationMetrics(PARTS)
    # A (cat 0): part 0 IoU 1/2, part 1 IoU 2/3 -> 7/12.  B (cat 0): part 0 IoU 1, part 1 absent from both -> 1.
    m.update(torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0]]), torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]]),
             torch.tensor([0, 0]))
    # C (cat 1): part 2 IoU 1/2, part 3 IoU 2/3, part 4 absent from both (IoU 1) -> 13/18
    m.update(torch.tensor([[2, 3, 3, 3]]), torch.tensor([[2, 2, 3, 3]]), torch.tensor([1]))
    out = m.compute()
    a, b, c = 7 / 12, 1.0, 13 / 18
    assert out["instance_miou"] == pytest.approx(100 * (a + b + c) / 3)
    assert out["class_miou"] == pytest.approx(100 * ((a + b) / 2 + c) / 2)
    assert out["iou_per_category"] == pytest.approx([100 * (a + b) / 2, 100 * c])
    assert out["oa"] == pytest.approx(100 * 10 / 12) and out["shapes"] == 3  # 3 + 4 + 3 of 12 points


def test_part_metrics_restrict_logits_to_the_shape_category_and_add_up():
    from pointdr2.data.classes import SHAPENETPART_PARTS
    from pointdr2.engine.metrics import PartSegmentationMetrics

    # cat 0, truth [1, 1]; the global argmax is part 4 (another category), part 1 beats part 0 -> IoU 1
    logits = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])  # [1, 5, 2]
    m = PartSegmentationMetrics(PARTS)
    m.update(logits, torch.tensor([[1, 1]]), torch.tensor([0]), class_dim=1)
    assert m.compute()["instance_miou"] == pytest.approx(100.0)
    unrestricted = PartSegmentationMetrics(PARTS)
    unrestricted.update(logits.argmax(dim=1), torch.tensor([[1, 1]]), torch.tensor([0]))
    assert unrestricted.compute()["instance_miou"] == pytest.approx(50.0)  # part 1 IoU 0, part 0 absent: 1
    # two processes' states sum to the state of one seeing everything
    both = PartSegmentationMetrics(PARTS)
    both.update(logits, torch.tensor([[1, 1]]), torch.tensor([0]), class_dim=1)
    both.update(torch.tensor([[2, 3, 3, 3]]), torch.tensor([[2, 2, 3, 3]]), torch.tensor([1]))
    one = PartSegmentationMetrics(PARTS)
    one.update(torch.tensor([[2, 3, 3, 3]]), torch.tensor([[2, 2, 3, 3]]), torch.tensor([1]))
    m.add_state(one.state, one.points)
    got, want = m.compute(), both.compute()
    assert got.pop("iou_per_category") == pytest.approx(want.pop("iou_per_category")) and got == pytest.approx(want)
    # ShapeNetPart defaults: 16 categories, a category without shapes is nan and left out of class mIoU
    snp = PartSegmentationMetrics()
    assert len(snp.category_parts) == 16 and snp.num_parts == 50 and snp.category_parts == list(SHAPENETPART_PARTS)
    snp.update(torch.tensor([[47, 48]]), torch.tensor([[47, 48]]), torch.tensor([15]))
    out = snp.compute()
    assert out["class_miou"] == pytest.approx(100.0) and math.isnan(out["iou_per_category"][0])
    with pytest.raises(ValueError, match="target part 0 is not a part of category 15"):
        snp.update(torch.tensor([[0]]), torch.tensor([[0]]), torch.tensor([15]))
