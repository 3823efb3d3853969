"""Joint sets: names, bones, mirror permutation, colours."""

import pytest

from stereo_pose3d.skeleton import (
    LEFT_COLOR,
    MADS,
    MPII,
    RIGHT_COLOR,
    get_skeleton,
    skeleton_for_joint_names,
)


def test_mpii_order_and_root():
    assert MPII.num_joints == 16
    assert MPII.joint_names[0] == "right_ankle" and MPII.joint_names[9] == "head_top"
    assert MPII.joint_names[MPII.root] == "pelvis"
    assert len(MPII.bones) == 15  # a tree over 16 joints


@pytest.mark.parametrize("skeleton", [MPII, MADS])
def test_flip_permutation_swaps_sides_and_is_an_involution(skeleton):
    perm = skeleton.flip_permutation
    for j, name in enumerate(skeleton.joint_names):
        mirrored = skeleton.joint_names[perm[j]]
        if name.startswith("left_"):
            assert mirrored == "right_" + name[5:]
        elif name.startswith("right_"):
            assert mirrored == "left_" + name[6:]
        else:
            assert mirrored == name
        assert perm[perm[j]] == j


def test_colours_by_side_and_lookup():
    assert MPII.joint_color(MPII.index("left_wrist")) == LEFT_COLOR
    assert MPII.bone_color((MPII.index("right_elbow"), MPII.index("right_wrist"))) == RIGHT_COLOR
    assert get_skeleton("mads19") is MADS
    assert skeleton_for_joint_names(list(MADS.joint_names)) is MADS
    with pytest.raises(KeyError, match="unknown skeleton"):
        get_skeleton("coco17")
    with pytest.raises(KeyError, match="not in skeleton"):
        MPII.index("nose")
