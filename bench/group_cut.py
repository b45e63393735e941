"""How far can grouping questions by meaning cut a reviewer's work? (issue 26, groundwork)

    python -m bench.group_cut --cache DIR/.meaning-cache/e5-small.npz   # the vectors a bench-quality
                                                                        # run with --keep-models left

On bench-quality's training split, the questions of ChatbotData's paraphrase
clusters (an answer shared by 3 or more questions), grouped by meaning with
leader clustering (each question joins the group of the nearest leader at
the cut or nearer, else leads a new one) and by scikit-learn's agglomerative
clustering.  Purity: the share of questions whose answer is their group's
most common.  Actions: one correction per group plus two (split off, then
correct) per question not of its group's answer, against one per exact
question key.  Prints a line per setting.
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import DEFAULT_DATA, read_pairs, split_test  # noqa: E402
from chatbot import meaning, morph  # noqa: E402

LEADER_CUTS = (0.88, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96)  # raw cosines: e5's lie between about 0.7 and 1
AGGLOMERATIVE_DISTANCES = (0.06, 0.08, 0.1, 0.12, 0.15)  # 1 - cosine


def leader_groups(vectors, cut):
    """Each vector's group: the nearest leader's at ``cut`` or more, else a new group it leads."""
    leaders, groups = np.zeros((0, vectors.shape[1]), np.float32), []
    for v in vectors:
        near = leaders @ v
        if len(near) and near.max() >= cut:
            groups.append(int(near.argmax()))
        else:
            leaders = np.vstack([leaders, v])
            groups.append(len(leaders) - 1)
    return groups


def score(groups, answers, keys) -> str:
    members = {}
    for group, answer in zip(groups, answers):
        members.setdefault(group, []).append(answer)
    pure = sum(Counter(m).most_common(1)[0][1] for m in members.values())
    actions = len(members) + 2 * (len(answers) - pure)
    return (f"groups {len(members)}, purity {pure / len(answers):.3f}, actions {actions} "
            f"({actions / len(set(keys)):.2f}x the {len(set(keys))} exact keys)")


def main(argv=None):
    from sklearn.cluster import AgglomerativeClustering

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", required=True, help="a trainer's cache of meaning vectors (e5-small.npz)")
    args = parser.parse_args(argv)
    with np.load(args.cache, allow_pickle=False) as data:
        row = {text: i for i, text in enumerate(data["texts"].tolist())}
        cached = data["vectors"].astype(np.float32)
    train, _ = split_test(read_pairs(DEFAULT_DATA), 10)
    shared = Counter(a for _, a in train)
    pairs = [(q, a) for q, a in train if shared[a] >= 3 and meaning.normalise(q) in row]
    vectors = cached[[row[meaning.normalise(q)] for q, _ in pairs]]
    answers, keys = [a for _, a in pairs], [morph.question_key(q) for q, _ in pairs]
    print(f"{len(pairs)} questions, {len(set(keys))} keys, {len(set(answers))} answers")
    for cut in LEADER_CUTS:
        print(f"leader {cut}: {score(leader_groups(vectors, cut), answers, keys)}")
    for linkage in ("average", "complete"):
        for distance in AGGLOMERATIVE_DISTANCES:
            groups = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage=linkage,
                                             distance_threshold=distance).fit_predict(vectors)
            print(f"{linkage} {distance}: {score(groups, answers, keys)}")


if __name__ == "__main__":
    main()
