"""From features to findings: likely wrong labels, near-duplicate pairs, outliers.

* **label**: a logistic-regression probe on the pooled features is cross-validated (5 folds,
  stratified, near-duplicates kept in one fold so a twin cannot vouch for a wrong label), and
  cleanlab's ``find_label_issues`` reads its out-of-sample probabilities (confident learning:
  per-class thresholds, the count of likely errors estimated from the joint of given and
  predicted labels; in each given class, that many of the least likely: ``prune_by_class``,
  which found more flips than the default on TrashNet's six classes, the same on two).
  Score: 1 - the probability of the given label; suggested: the likeliest other class.
* **near_duplicate**: regional features, centred on the set's mean, compared by cosine
  distance in blocks (:func:`finetuner.data.near_duplicates.nearest`).  A pair is reported
  when its distance is at most ``ratio`` times *each* image's distance to its 5th nearest
  image: a ratio test, so it adapts to how alike a domain's images are (chest X-rays all
  look alike; photos do not).  Identical features always pair (more than six identical
  images: each with five of them, the lowest indices; connected, one group).  Score: 1 -
  that ratio.  Where both images are outliers (below), each one's 5th nearest is an image
  unlike it, and the ratio says only that they are closer to each other than to the set, as
  any two junk images are (a blank frame and a text page are alike to the backbone): such a
  pair is reported only when their grey thumbnails (``Features.thumbs``) also correlate at
  :data:`PIXEL_CORRELATION` or more, shifted by up to :data:`PIXEL_SHIFT` pixels (a flat
  thumbnail, its grey levels varying less than :data:`FLAT_GREY`, correlates with none), or
  their features are identical.  A pair with an image that has neighbours of its kind is
  reported on the features alone: two shots of one object differ in pixels.
* **outlier**: cleanlab's ``OutOfDistribution`` (mean cosine distance to the 10 nearest
  images over its median), on the pooled features and on every stage's pooled output side
  by side (``Features.every_stage``); an image is reported when, in either, that is above
  the upper quartile by more than ``fence`` interquartile ranges (Tukey's fence).  The last
  stage alone misses a blank frame or a screenshot among photos of objects on plain
  backgrounds (TrashNet); every stage alone misses a screenshot among insects; either finds
  both (docs/audit.md).  Alike images count as one (their mean): junk that comes in a batch
  (blank frames, a scraper's error pages) is each other's nearest images, and would
  otherwise vouch for itself.  Alike: the near-duplicate ratio test against each image's
  10th nearest instead of its 5th (the outlier check's k), so a batch of up to 10 (each
  other's whole neighbourhood) is one group; groups are the pairs' connected components,
  which can chain further where junk is most of a folder.  Score: 1 - cleanlab's outlier
  score, the larger of the two; every member of a group gets the group's.

Findings come in the order of :data:`ISSUES`, each kind most certain (highest score) first.
Memory: the features; one centred copy of the regional ones for the near-duplicate search,
with ``block x N`` distances at a time; the outlier check's copies of each representation
(cleanlab's ``OutOfDistribution``: a normalised one, and three in its exact-duplicate check);
and the probe's copies of a fold of the pooled ones.  One step at a time, not together.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import sklearn
from cleanlab.filter import find_label_issues
from cleanlab.outlier import OutOfDistribution
from scipy.sparse import csr_matrix
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data.near_duplicates import groups, nearest
from ..data.manifest import SPLITS
from .features import Features

ISSUES = ("label", "near_duplicate", "outlier")
COLUMNS = ("path", "issue", "given", "suggested", "other", "split", "score", "other_given",
           "other_split")
FOLDS = 5
PROBE_C = 0.01       # measured on the shared sets: flips found as well as with 0.1 or 1
REFERENCE = 5        # the near-duplicate ratio's reference: the 5th nearest image
NEIGHBOURS = 10      # the outlier check's: cleanlab's k, and the alike batches' reference
SAME = 1e-6          # cosine distance under which two images count as identical
PIXEL_CORRELATION = 0.6  # two outliers' thumbnails: copies >= 0.75, two text pages 0.42
PIXEL_SHIFT = 2      # thumbnail pixels (of 32) a copy's may be shifted by (a 5 % crop: 1-2)
FLAT_GREY = 3.0      # a thumbnail whose grey levels vary less is flat (a photo's: tens)
ROW_BLOCK = 1024     # rows of features a temporary holds (centring, row lengths)
COLUMN_BLOCK = 128   # columns of features a float64 temporary holds (the groups' means)


@dataclass(frozen=True)
class Finding:
    path: str
    issue: str           # one of ISSUES
    given: str           # the class of its folder
    suggested: str = ""  # label: the likeliest other class
    other: str = ""      # near_duplicate: the twin
    split: str = ""      # train, val or test ("" outside the pipeline)
    score: float = 0.0   # in [0, 1], higher is more certain
    other_given: str = ""
    other_split: str = ""

    def row(self) -> list:
        """The CSV row, in the order of :data:`COLUMNS`."""
        return [f"{v:.4f}" if isinstance(v, float) else v for v in asdict(self).values()]

    def record(self) -> dict:
        """The JSON object: the CSV's columns, the score a number."""
        return {**asdict(self), "score": round(self.score, 4)}


@dataclass(frozen=True)
class Audit:
    findings: list[Finding]
    images: int
    probe_accuracy: float | None  # cross-validated accuracy of the probe (None: not run)

    def count(self, issue: str) -> int:
        return sum(f.issue == issue for f in self.findings)

    def summary(self) -> dict:
        """The counts ``metrics/audit.json`` holds."""
        across = sum(f.issue == "near_duplicate" and f.split != f.other_split
                     for f in self.findings)
        return {"images": self.images, **{issue: self.count(issue) for issue in ISSUES},
                "near_duplicate_pairs_across_splits": across,
                "probe_accuracy": (None if self.probe_accuracy is None
                                   else round(self.probe_accuracy, 4))}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows left as they are), float32: a new array, the
    only copy of a float32 ``x``."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32, copy=False)


def centred_unit_rows(x: np.ndarray, block: int = ROW_BLOCK) -> np.ndarray:
    """:func:`unit_rows` of ``x`` less its mean row, the same numbers, in one new array and
    ``block`` rows of temporaries: each row's centring and length are its own, so going
    through the rows a block at a time changes none of them."""
    mean = x.mean(0)
    out = np.empty(x.shape, np.result_type(x.dtype, mean.dtype))
    for start in range(0, len(x), block):
        rows = slice(start, start + block)
        np.subtract(x[rows], mean, out=out[rows])
        norm = np.linalg.norm(out[rows], axis=1, keepdims=True)
        out[rows] /= np.where(norm > 0, norm, 1.0)
    return out.astype(np.float32, copy=False)


def near_duplicate_pairs(regional: np.ndarray, ratio: float) -> list[tuple[int, int, float]]:
    """(i, j, score), i < j, of the near-duplicate pairs (see the module doc)."""
    return alike_pairs(regional, ratio, (REFERENCE,))[0]


def alike_groups(regional: np.ndarray, ratio: float) -> np.ndarray:
    """Each image's batch of alike images, the groups the outlier check scores as one image
    (a group number per image; see the module doc)."""
    return groups(len(regional), alike_pairs(regional, ratio, (NEIGHBOURS,))[0])


def alike_pairs(regional: np.ndarray, ratio: float,
                references: tuple[int, ...]) -> list[list[tuple[int, int, float]]]:
    """For each ``r`` of ``references``: (i, j, score), i < j, of the pairs whose distance is
    at most ``ratio`` times each one's distance to its r-th nearest image (identical images
    always, among each one's r nearest), from one search for the nearest images."""
    count = len(regional)
    if count < 2:
        return [[] for _ in references]
    x = centred_unit_rows(regional)
    dist, index = nearest(count, min(max(references), count - 1),
                          lambda rows: 1.0 - x[rows] @ x.T)
    return [ratio_pairs(dist[:, :min(r, count - 1)], index, ratio) for r in references]


def ratio_pairs(dist: np.ndarray, index: np.ndarray, ratio: float) -> list[tuple[int, int, float]]:
    """The pairs of :func:`alike_pairs` for a reference of ``dist.shape[1]``: ``dist`` and
    ``index``, each image's distances to its nearest images, nearest first, and which they are."""
    k = dist.shape[1]
    reference = np.maximum(dist[:, k - 1], SAME)
    pairs = {}
    for i, column in zip(*np.nonzero(dist[:, :k] <= ratio * reference[:, None])):
        j, d = int(index[i, column]), dist[i, column]
        worst = 0.0 if d <= SAME else float(max(d / reference[i], d / reference[j]))
        if worst <= ratio:
            pairs[(min(i, j), max(i, j))] = 1.0 - worst
    return [(i, j, score) for (i, j), score in sorted(pairs.items())]


def thumbnail_correlation(thumbs: np.ndarray, i: int, j: int, shift: int = PIXEL_SHIFT) -> float:
    """The highest Pearson correlation of thumbnails ``i`` and ``j`` (rows of ``thumbs``, square
    images flattened) over shifts of up to ``shift`` pixels along each axis, on the part they
    overlap: a copy cropped a little from one edge is shifted a pixel or two."""
    side = math.isqrt(thumbs.shape[1])
    a, b = (thumbs[k].reshape(side, side) for k in (i, j))
    offsets = range(-shift, shift + 1)
    return max(_correlation(a[_overlap(dy, side)][:, _overlap(dx, side)],
                            b[_overlap(-dy, side)][:, _overlap(-dx, side)])
               for dy in offsets for dx in offsets)


def _overlap(offset: int, side: int) -> slice:
    """Of a line of ``side`` pixels, the part that meets another shifted by ``offset``."""
    return slice(max(0, offset), side + min(0, offset))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays of one shape; 0 where either is flat, its standard
    deviation under :data:`FLAT_GREY` levels (no pattern to agree on: correlation ignores
    scale, so two nearly blank frames with faint gradients would otherwise agree)."""
    rows = np.stack([a.ravel(), b.ravel()]).astype(np.float32)
    if rows.std(1).min() < FLAT_GREY:
        return 0.0
    x, y = unit_rows(rows - rows.mean(1, keepdims=True))
    return float(x @ y)


def confirmed_in_pixels(pairs: list[tuple[int, int, float]], far: set[int],
                        thumbs: np.ndarray) -> list[tuple[int, int, float]]:
    """``pairs`` less those of two images in ``far`` (outliers) whose thumbnails correlate
    below :data:`PIXEL_CORRELATION` (see the module doc); identical features (score 1) always
    stand, and every pair where there are no thumbnails (``thumbs`` without columns)."""
    if thumbs.shape[1] == 0:
        return pairs
    return [(i, j, score) for i, j, score in pairs
            if score >= 1.0 or not (i in far and j in far)
            or thumbnail_correlation(thumbs, i, j) >= PIXEL_CORRELATION]


def out_of_sample_probabilities(pooled: np.ndarray, labels: np.ndarray, num_classes: int,
                                group: np.ndarray, seed: int) -> np.ndarray:
    """(N, num_classes) probabilities of each image from a probe that never saw it (nor its
    near-duplicates): stratified group k-fold, :data:`FOLDS` folds or as many as the groups
    and the largest class allow (at least 2: the caller checks :func:`folds_for`)."""
    probabilities = np.zeros((len(labels), num_classes))
    folds = folds_for(labels, group)
    with warnings.catch_warnings():  # small classes and folds: scikit-learn says so, we know
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        for train, test in splitter.split(pooled, labels, group):
            present = np.unique(labels[train])
            if len(present) < 2:  # one class to learn from: it is all the probe can say
                probabilities[test, present[0]] = 1.0
                continue
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))
            probe.fit(pooled[train], labels[train])
            probabilities[np.ix_(test, present)] = probe.predict_proba(pooled[test])
    return probabilities


def folds_for(labels: np.ndarray, group: np.ndarray) -> int:
    """How many folds the probe's cross-validation can have (< 2: none)."""
    return int(min(FOLDS, len(np.unique(group)), np.bincount(labels).max()))


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the likely wrong labels, most likely first (cleanlab)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about tiny classes; the rows say enough
        return find_label_issues(labels, probabilities, filter_by="prune_by_class",
                                 return_indices_ranked_by="self_confidence")


def outliers(representations: list[np.ndarray], fence: float,
             group: np.ndarray | None = None) -> list[tuple[int, float]]:
    """(index, score) of the images far from every other in any of ``representations`` (each
    (N, D), the same images in the same order; see the module doc).  ``group``: each image's
    batch of alike images (:func:`alike_groups`; None: each image its own), scored as one
    point, the mean of its members."""
    far = {}
    for features in representations:
        points, member_of = group_means(features, group)
        if len(points) < 3 or features.shape[1] == 0:
            continue
        k = min(NEIGHBOURS, len(points) - 1)
        with sklearn.config_context(working_memory=128):  # MB of distances at a time
            scores = OutOfDistribution(params={"k": k}).fit_score(features=points, verbose=False)
        scores = np.asarray(scores, dtype=np.float64)  # float32's smallest is far above 1e-300
        distance = -np.log(np.clip(scores, 1e-300, 1.0))  # mean distance / its median
        q1, q3 = np.percentile(distance, [25, 75])
        beyond = distance > q3 + fence * (q3 - q1)
        for i in np.flatnonzero(beyond[member_of]):
            far[int(i)] = max(far.get(int(i), 0.0), float(1.0 - scores[member_of[i]]))
    return sorted(far.items())


def group_means(features: np.ndarray, group: np.ndarray | None,
                block: int = COLUMN_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(G, D) float32 means of each group's rows, and each row's index into them (``group``
    None or all distinct: the rows as they are).  Each mean is summed in float64 and rounded,
    ``block`` columns at a time (each column's sums are its own: the same numbers as all at
    once), so the float64 copies scipy makes are of a block, not of ``features``."""
    if group is None or len(np.unique(group)) == len(group):
        return features, np.arange(len(features))
    _, member_of = np.unique(group, return_inverse=True)
    count = np.bincount(member_of)
    mean = csr_matrix((1.0 / count[member_of], (member_of, np.arange(len(group)))))
    means = np.empty((mean.shape[0], features.shape[1]), np.float32)
    for start in range(0, features.shape[1], block):
        columns = slice(start, start + block)
        means[:, columns] = mean @ features[:, columns]
    return means, member_of


def audit_outliers(features: Features, fence: float,
                   group: np.ndarray | None) -> list[tuple[int, float]]:
    """:func:`outliers` as the audit runs it: on the pooled features and, where there are
    taps, on every stage's side by side; each group of ``group`` (:func:`alike_groups`) as
    one point."""
    every_stage = [features.every_stage()] if features.taps.shape[1] else []
    return outliers([features.pooled] + every_stage, fence, group)


def pairs_and_outliers(features: Features, ratio: float, fence: float
                       ) -> tuple[list[tuple[int, int, float]], list[tuple[int, float]]]:
    """The near-duplicate pairs (i, j, score) the audit reports, confirmed in pixels where both
    are outliers, and the outliers (index, score): one search for the nearest images serves
    the ratio test and the batches of alike images (see the module doc)."""
    pairs, alike = alike_pairs(features.regional, ratio, (REFERENCE, NEIGHBOURS))
    far = audit_outliers(features, fence, groups(len(features), alike))
    return confirmed_in_pixels(pairs, {i for i, _ in far}, features.thumbs), far


def audit(features: Features, labels: np.ndarray, class_names: list[str], paths: list[str],
          splits: list[str], ratio: float, fence: float, seed: int) -> Audit:
    """Every finding about the images ``paths`` (labels: indices into ``class_names``;
    ``splits``: each image's split, or "")."""
    labels = np.asarray(labels, dtype=np.int64)
    findings: list[Finding] = []
    pairs, far = pairs_and_outliers(features, ratio, fence)
    for i, j, score in pairs:
        i, j = sorted((i, j), key=lambda n: (_order(splits[n]), paths[n]))  # path: the later
        findings.append(Finding(paths[j], "near_duplicate", class_names[labels[j]],
                                other=paths[i], split=splits[j], score=score,
                                other_given=class_names[labels[i]], other_split=splits[i]))
    accuracy = None
    group = groups(len(labels), pairs)
    if len(np.unique(labels)) >= 2 and folds_for(labels, group) >= 2:
        probabilities = out_of_sample_probabilities(features.pooled, labels, len(class_names),
                                                    group, seed)
        accuracy = float((probabilities.argmax(1) == labels).mean())
        for i in label_issues(probabilities, labels):
            others = probabilities[i].copy()
            others[labels[i]] = -1.0
            findings.append(Finding(paths[i], "label", class_names[labels[i]],
                                    class_names[int(others.argmax())], split=splits[i],
                                    score=float(1.0 - probabilities[i, labels[i]])))
    for i, score in far:
        findings.append(Finding(paths[i], "outlier", class_names[labels[i]], split=splits[i],
                                score=score))
    findings.sort(key=lambda f: (ISSUES.index(f.issue), -f.score, f.path, f.other))
    return Audit(findings, len(labels), accuracy)


def _order(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else -1
