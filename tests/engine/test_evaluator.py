"""Evaluation: voting averages logits; metrics equal a hand-built confusion matrix; batch-size invariance."""

import torch
from torch import nn

from pointdr2.engine.evaluator import evaluate, task_of, vote_logits, vote_params


class Linear(nn.Module):
    """logits = mean over points of W x (so augmentation visibly changes the logits)."""

    def __init__(self, k=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, k, generator=g, dtype=torch.float64))

    def forward(self, points):
        return (points[..., :3].double() @ self.w).mean(dim=1)


class Items(torch.utils.data.Dataset):
    def __init__(self, n=7, k=3):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 10, 3, generator=g, dtype=torch.float64) + 0.5
        self.y = torch.arange(n) % k
        self.num_classes = k

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"points": self.x[i], "label": self.y[i]}


def test_vote_logits_is_the_mean_of_the_augmented_logits():
    net, ds = Linear(), Items()
    pts = ds.x[:3]
    scale, shift = vote_params([0, 1, 2], 4, seed=5)
    manual = torch.stack([net(pts * scale[v] + shift[v]) for v in range(4)]).mean(dim=0)
    torch.testing.assert_close(vote_logits(net, pts, scale, shift), manual.float())
    assert not torch.allclose(manual, net(pts))  # the augmentation matters
    # scale in [2/3, 3/2], shift in [-0.2, 0.2]; per-sample draws do not depend on the batch
    assert scale.min() >= 2 / 3 and scale.max() <= 1.5 and shift.abs().max() <= 0.2
    s2, t2 = vote_params([2], 4, seed=5)
    assert torch.equal(s2[:, 0], scale[:, 2]) and torch.equal(t2[:, 0], shift[:, 2])


def test_evaluate_with_votes_matches_hand_built_confusion_matrix():
    net, ds = Linear(), Items()
    m = evaluate(net, ds, device=torch.device("cpu"), batch_size=3, vote=5, seed=2, progress=False)
    cm = torch.zeros(3, 3, dtype=torch.int64)
    for i in range(len(ds)):
        scale, shift = vote_params([i], 5, seed=2)
        logits = torch.stack([net(ds.x[i:i + 1] * scale[v] + shift[v]) for v in range(5)]).mean(0)
        cm[int(ds.y[i]), int(logits.argmax())] += 1
    assert m["confusion"] == cm.tolist()
    assert abs(m["oa"] - 100.0 * cm.diagonal().sum().item() / len(ds)) < 1e-12
    # batch size does not change votes or metrics
    m2 = evaluate(net, ds, device=torch.device("cpu"), batch_size=7, vote=5, seed=2, progress=False)
    assert m2["confusion"] == m["confusion"]


def test_segmentation_batches_use_point_labels():
    class Seg(nn.Module):
        def forward(self, pos, feats):
            # class 1 where x > 0 else class 0: logits [B, 2, N]
            return torch.stack([-pos[..., 0], pos[..., 0]], dim=1)

    class SegItems(torch.utils.data.Dataset):
        num_classes = 2

        def __len__(self):
            return 2

        def __getitem__(self, i):
            pos = torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
            return {"pos": pos, "feats": torch.zeros(1, 3), "label": torch.tensor([0, 1, 0])}

    m = evaluate(Seg(), SegItems(), device=torch.device("cpu"), batch_size=2, progress=False)
    assert m["task"] == "segmentation" and m["confusion"] == [[2, 2], [0, 2]]
    assert abs(m["miou"] - 100 * (2 / 4 + 2 / 4) / 2) < 1e-9
    assert task_of({"pos": 1, "feats": 2}) == "segmentation"


def test_outputs_beyond_the_dataset_classes_count_as_wrong():
    """A model with more outputs than the dataset has classes (an official checkpoint's own head):
    argmax over all outputs, per-class metrics over the dataset's classes (hand-computed)."""

    class Seg(nn.Module):
        num_classes = 4  # two outputs the dataset has no class for

        def forward(self, pos, feats):
            # x < 0 -> class 0, 0 <= x < 1.5 -> class 1, x >= 1.5 -> class 3 (not a dataset class)
            x = pos[..., 0]
            return torch.stack([-x, 1 - (x - 0.75).abs(), torch.full_like(x, -9.0), x - 1.5], dim=1)

    class SegItems(torch.utils.data.Dataset):
        num_classes = 2

        def __len__(self):
            return 1

        def __getitem__(self, i):
            pos = torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
            return {"pos": pos, "feats": torch.zeros(1, 4), "label": torch.tensor([0, 1, 1, 0])}

    m = evaluate(Seg(), SegItems(), device=torch.device("cpu"), batch_size=1, progress=False)
    # predictions 0, 1, 3, 3: class 0 has 1 of 2 right (IoU 1/2), class 1 has 1 of 2 right (IoU 1/2)
    assert abs(m["oa"] - 50.0) < 1e-9 and abs(m["macc"] - 50.0) < 1e-9
    assert len(m["iou_per_class"]) == 2 and abs(m["miou"] - 50.0) < 1e-9
    assert m["confusion"][0][3] == 1 and m["confusion"][1][3] == 1
