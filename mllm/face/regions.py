"""The iBUG 68-point scheme split into the 9 facial regions that region-guided attention uses.

Indices are 0-based (the iBUG figure counts from 1). The subject's right eye is on the image's left.
"""

JAW = range(0, 17)
RIGHT_BROW = range(17, 22)
LEFT_BROW = range(22, 27)
NOSE_BRIDGE = range(27, 31)
NOSTRILS = range(31, 36)
RIGHT_EYE = range(36, 42)
LEFT_EYE = range(42, 48)
OUTER_LIPS = range(48, 60)
INNER_LIPS = range(60, 68)

REGIONS: dict[str, range] = {
    "jaw": JAW,
    "right_brow": RIGHT_BROW,
    "left_brow": LEFT_BROW,
    "nose_bridge": NOSE_BRIDGE,
    "nostrils": NOSTRILS,
    "right_eye": RIGHT_EYE,
    "left_eye": LEFT_EYE,
    "outer_lips": OUTER_LIPS,
    "inner_lips": INNER_LIPS,
}
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)
NUM_LANDMARKS = 68
# Regions drawn as closed outlines (the others are open polylines).
CLOSED_REGIONS = frozenset({"right_eye", "left_eye", "outer_lips", "inner_lips"})


def region_of_point(index: int) -> str:
    """Name of the region that landmark `index` (0-67) belongs to."""
    for name, points in REGIONS.items():
        if index in points:
            return name
    raise ValueError(f"landmark index must be in 0..{NUM_LANDMARKS - 1}, got {index}")
