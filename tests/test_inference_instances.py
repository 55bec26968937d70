"""Instances from cell and border probability maps (synthetic maps and maps derived from real annotations)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from conftest import load_usiigaci_set
from napari_cell_unet.inference import instances_from_probabilities
from napari_cell_unet.metrics import match_instances


def two_touching_discs(shape=(80, 120), radius=20):
    truth = np.zeros(shape, np.int32)
    truth[disk((40, 40), radius, shape=shape)] = 1
    truth[disk((40, 78), radius, shape=shape)] = 2  # centres 38 px apart: the discs overlap/touch
    return truth


def maps_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability maps a good model would give: smooth cell extent and a ~2-px border straddling every edge."""
    cell = ndimage.gaussian_filter((labels > 0).astype(np.float32), 1.0)
    border = ndimage.gaussian_filter(find_boundaries(labels, mode="thick").astype(np.float32), 0.7) * 1.5
    return cell, np.clip(border, 0, 1)


def test_touching_discs_sharing_a_border_become_two_instances():
    truth = two_touching_discs()
    cell, border = maps_from_labels(truth)
    labels = instances_from_probabilities(cell, border)
    assert labels.dtype == np.uint32
    assert labels.max() == 2
    result = match_instances(labels, truth, 0.8)
    assert result.tp == 2, result  # each disc recovered with its full extent (IoU >= 0.8)


def test_without_a_border_the_touching_discs_stay_one_object():
    truth = two_touching_discs()
    cell, _ = maps_from_labels(truth)
    labels = instances_from_probabilities(cell, np.zeros_like(cell))
    assert labels.max() == 1


def test_seeds_grow_back_over_the_whole_cell_mask():
    truth = two_touching_discs()
    cell, border = maps_from_labels(truth)
    labels = instances_from_probabilities(cell, border)
    np.testing.assert_array_equal(labels > 0, cell > 0.5)


def test_small_objects_removed_and_ids_consecutive():
    cell = np.zeros((60, 60), np.float32)
    cell[5:15, 5:15] = 0.9      # 100 px
    cell[20:23, 20:23] = 0.9    # 9 px, removed at min_size 30
    cell[40:50, 40:55] = 0.9    # 150 px
    border = np.zeros_like(cell)
    labels = instances_from_probabilities(cell, border, min_size=30)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert labels[22, 22] == 0 and labels[10, 10] > 0 and labels[45, 45] > 0
    assert instances_from_probabilities(cell, border, min_size=5).max() == 3


def test_the_size_rule_follows_the_cells_diameter_unless_a_size_is_given():
    from types import SimpleNamespace

    from napari_cell_unet.inference.instances import instance_params, sized_params

    model = SimpleNamespace(postprocessing={"cell_threshold": 0.5, "border_threshold": 0.5, "min_size": 10,
                                            "merge_threshold": 0.0, "min_size_fraction": 0.15})
    params = instance_params(model)
    # a cell 40 px across has 1,257 px: pieces under 15 % of it (188 px) go, whatever the floor of 10 px
    assert sized_params(params, 40.0)["min_size"] == 188
    assert sized_params(params, 8.0)["min_size"] == 10  # 7 px of a 50-px nucleus: the floor decides
    assert "min_size_fraction" not in sized_params(params, 40.0)
    assert sized_params(instance_params(model, min_size=3), 40.0)["min_size"] == 3  # a number given is the rule
    cell = np.zeros((80, 80), np.float32)
    cell[10:40, 10:40] = 0.9  # a 900-px cell (about 34 px across)
    cell[60:70, 60:70] = 0.9  # a 100-px piece: 11 % of it
    labels = instances_from_probabilities(cell, np.zeros_like(cell), **sized_params(params, 34.0))
    assert labels.max() == 1 and labels[20, 20] == 1
    labels = instances_from_probabilities(cell, np.zeros_like(cell), **sized_params(params, 20.0))
    assert labels.max() == 2  # at half the size the piece is a whole small cell


def test_touching_cells_behind_a_faint_border_are_split_by_stricter_seeds_of_cell_size():
    from types import SimpleNamespace

    from napari_cell_unet.inference.instances import instance_params, sized_params

    truth = two_touching_discs()  # two discs of ~1,250 px (40 px across)
    cell, border = maps_from_labels(truth)
    faint = border * 0.03 / border.max()  # the network drew their border under the seed threshold (0.05)
    model = SimpleNamespace(postprocessing={"cell_threshold": 0.5, "border_threshold": 0.05, "min_size": 10,
                                            "merge_threshold": 0.0, "min_size_fraction": 0.15,
                                            "split_border_threshold": 0.01, "split_seed_fraction": 0.3})
    params = sized_params(instance_params(model), 40.0)
    assert params["split_seed_size"] == int(0.3 * np.pi / 4 * 40 ** 2)
    assert instances_from_probabilities(cell, faint, **{**params, "split_border_threshold": 0.0}).max() == 1
    labels = instances_from_probabilities(cell, faint, **params)
    assert labels.max() == 2 and match_instances(labels, truth, 0.8).tp == 2
    # judged at a 100-px cell size, each stricter seed is under 0.3 of a cell: not a cell of its own
    assert instances_from_probabilities(cell, faint, **sized_params(instance_params(model), 100.0)).max() == 1
    # a "stricter" threshold that is not below the seeds' own does nothing
    assert instances_from_probabilities(cell, faint, **{**params, "split_border_threshold": 0.05}).max() == 1


def test_a_cell_whose_stricter_seed_leaves_a_speck_stays_whole():
    cell = np.zeros((80, 80), np.float32)
    cell[disk((40, 40), 20, shape=cell.shape)] = 0.9
    border = np.zeros_like(cell)
    border[:, 52] = 0.03  # a faint line cuts off a cap of the cell: about a tenth of it
    labels = instances_from_probabilities(cell, border, 0.5, 0.05, 10, split_border_threshold=0.01,
                                          split_seed_size=int(0.3 * np.pi / 4 * 40 ** 2))
    assert labels.max() == 1 and (labels > 0).sum() == (cell > 0.5).sum()
    border[:, 40] = 0.03  # through the middle: two halves, each a sizeable part of a cell
    labels = instances_from_probabilities(cell, border, 0.5, 0.05, 10, split_border_threshold=0.01,
                                          split_seed_size=int(0.3 * np.pi / 4 * 40 ** 2))
    assert labels.max() == 2 and (labels > 0).sum() == (cell > 0.5).sum()


def test_a_cell_covered_by_border_probability_is_kept_as_its_own_object():
    cell = np.zeros((40, 40), np.float32)
    cell[10:20, 10:20] = 0.9
    border = np.zeros_like(cell)
    border[10:20, 10:20] = 0.9  # no seed inside
    labels = instances_from_probabilities(cell, border, min_size=10)
    assert labels.max() == 1 and (labels == 1).sum() == 100


def test_thresholds_are_parameters():
    truth = two_touching_discs()
    cell, border = maps_from_labels(truth)
    assert instances_from_probabilities(cell, border, border_threshold=1.01).max() == 1
    assert instances_from_probabilities(cell, border, cell_threshold=1.0).max() == 0


def test_empty_maps_and_bad_shapes():
    assert instances_from_probabilities(np.zeros((10, 10)), np.zeros((10, 10))).max() == 0
    with pytest.raises(ValueError, match="shape"):
        instances_from_probabilities(np.zeros((10, 10)), np.zeros((10, 11)))


def test_real_annotations_are_recovered_from_ideal_maps(usiigaci):
    data = load_usiigaci_set("set20")
    truth = data["labels"]
    cell, border = maps_from_labels(truth)
    labels = instances_from_probabilities(cell, border)
    result = match_instances(labels, truth, 0.5)
    assert result.f1 > 0.95, result
    # measured: 125 objects for 114 cells (thin processes cut off at a narrow neck), F1 0.96
    assert abs(int(labels.max()) - int(truth.max())) <= 0.15 * truth.max()


def test_row_bands_give_the_whole_plane_instances(usiigaci):
    from napari_cell_unet.inference import instances_in_bands

    truth = load_usiigaci_set("set20")["labels"]
    cell, border = maps_from_labels(truth)
    whole = instances_from_probabilities(cell, border)
    banded = instances_in_bands(cell, border, band_pixels=256 * truth.shape[1], margin=128)  # 4 bands
    assert banded.dtype == np.uint32
    ids = np.unique(banded)
    assert np.array_equal(ids, np.arange(ids.size))  # consecutive
    # the same objects, cells across band edges kept whole; watershed ties on the plateaus of these ideal
    # maps may move a few edge pixels (measured: 124 of 125 at IoU 0.98, all at 0.9)
    assert abs(int(banded.max()) - int(whole.max())) <= 1
    assert match_instances(banded, whole, 0.9).tp >= int(whole.max()) - 1
    assert np.array_equal(banded > 0, whole > 0)
    # too little context for these cells splits some of them: the margin matters
    narrow = instances_in_bands(cell, border, band_pixels=150 * truth.shape[1], margin=100)
    assert match_instances(narrow, whole, 0.98).tp < match_instances(banded, whole, 0.98).tp
    # one band: exactly the whole-plane result
    np.testing.assert_array_equal(instances_in_bands(cell, border, band_pixels=truth.size), whole)


def test_small_objects_dropped_and_ids_keyed_as_the_sorting_versions_did():
    """The table-lookup `remove_small_instances` and the bounding-box `first_pixels` give exactly what
    skimage's relabel_sequential and np.unique(return_index=True) give (dense and sparse ids)."""
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential

    from napari_cell_unet.inference.instances import first_pixels, remove_small_instances

    rng = np.random.default_rng(1)
    labels, _ = ndimage.label(ndimage.gaussian_filter(rng.random((300, 420)), 2) > 0.5)
    labels[labels == 7] = 0  # a gap in the ids
    for min_size in (0, 1, 20, 200):
        sizes = np.bincount(labels.ravel())
        expected, _, _ = relabel_sequential(np.where((sizes < min_size)[labels] & (labels > 0), 0, labels))
        assert np.array_equal(remove_small_instances(labels, min_size), expected)
        sparse = np.where(labels > 0, labels.astype(np.uint64) * 10**9, 0)  # ids keyed by position
        assert np.array_equal(remove_small_instances(sparse, min_size), expected)
    ids, first = np.unique(labels.ravel(), return_index=True)
    got_ids, got_first = first_pixels(labels)
    assert np.array_equal(got_ids, ids[1:]) and np.array_equal(got_first, first[1:])
    assert first_pixels(np.zeros((5, 5), np.int32))[0].size == 0


def test_touching_pieces_without_a_border_between_them_are_merged():
    from napari_cell_unet.inference.instances import merge_weak_contacts

    labels = np.zeros((40, 60), np.uint32)
    labels[5:15, 5:25], labels[5:15, 25:45] = 1, 2  # one elongated cell split in two
    labels[25:35, 5:25], labels[25:35, 25:45] = 3, 4  # two touching cells with a border between them
    border = np.zeros(labels.shape, np.float32)
    border[5:15, 24:26] = 0.2  # a weak border blob split the first cell's seed
    border[25:35, 24:26] = 0.8
    merged = merge_weak_contacts(labels, border, 0.3)
    assert len(np.unique(merged[5:15, 5:45])) == 1
    assert len(np.unique(merged[25:35, 5:45])) == 2
    np.testing.assert_array_equal(merge_weak_contacts(labels, border, 0.1), labels)  # stricter: nothing merged
    # end to end: a probability map whose seed is split by a weak border blob
    cell = (labels > 0).astype(np.float32)
    split = instances_from_probabilities(cell, border, 0.5, 0.1, 10)
    assert split.max() == 4
    assert instances_from_probabilities(cell, border, 0.5, 0.1, 10, merge_threshold=0.3).max() == 3


def test_seeds_flood_each_part_of_the_mask_as_one_watershed_of_the_plane(usiigaci):
    """`flood_seeds` (one watershed per connected part of the mask, parts with one seed filled directly) gives
    skimage's whole-plane watershed labels on maps of real cells (tie-free: real network outputs rarely tie)."""
    from skimage.segmentation import watershed

    from napari_cell_unet.inference.instances import flood_seeds, seed_mask

    truth = load_usiigaci_set("set20")["labels"]
    cell, border = maps_from_labels(truth)
    cell = cell + np.random.default_rng(0).uniform(0, 1e-4, cell.shape).astype(np.float32)
    mask = cell > 0.5
    seeds, n_seeds = ndimage.label(seed_mask(cell, border, 0.5, 0.5))
    flooded = flood_seeds(cell, seeds, mask)
    np.testing.assert_array_equal(flooded, watershed(-cell, seeds, mask=mask))
    parts, n_parts = ndimage.label(mask)
    assert 1 < n_parts < n_seeds  # some parts have several seeds, so both ways are exercised
    # a part without a seed stays background
    lonely = np.zeros((20, 40), np.float32)
    lonely[2:8, 2:8] = lonely[10:18, 20:38] = 0.9
    seeds = np.zeros(lonely.shape, np.int32)
    seeds[12:16, 22:26], seeds[12:16, 32:36] = 1, 2
    flooded = flood_seeds(lonely, seeds, lonely > 0.5)
    assert not flooded[2:8, 2:8].any() and set(np.unique(flooded[10:18, 20:38])) == {1, 2}


def test_stricter_seeds_split_the_same_cells_in_row_bands_as_in_one_piece(usiigaci):
    """Real cells (Usiigaci set20) whose borders are drawn faintly, under the seed threshold: touching cells merge
    unless the stricter seeds split them, and bands (a huge image's instance step) split the same ones."""
    from napari_cell_unet.inference import instances_in_bands

    truth = load_usiigaci_set("set20")["labels"]
    cell, border = maps_from_labels(truth)
    faint = border * 0.03 / border.max()
    params = {"cell_threshold": 0.5, "border_threshold": 0.05, "min_size": 30, "split_border_threshold": 0.01,
              "split_seed_size": int(0.3 * np.pi / 4 * 40 ** 2)}  # cells here are ~60 px across
    merged = instances_from_probabilities(cell, faint, **{**params, "split_border_threshold": 0.0})
    whole = instances_from_probabilities(cell, faint, **params)
    found = {name: match_instances(labels, truth, 0.5).tp for name, labels in (("merged", merged), ("split", whole))}
    assert found["split"] >= found["merged"] + 0.2 * truth.max(), found
    banded = instances_in_bands(cell, faint, band_pixels=256 * truth.shape[1], margin=128, **params)
    assert abs(int(banded.max()) - int(whole.max())) <= 1
    assert match_instances(banded, whole, 0.9).tp >= int(whole.max()) - 1
