"""Faces: dlib 68-point landmarks, the subject tracked through a clip, the 9 iBUG regions, aligned crops, a cache."""

from mllm.face.align import AlignedFace, align_face, similarity_matrix
from mllm.face.landmarks import DetectorSettings, Face, FaceDetector, box_iou
from mllm.face.pipeline import FaceCache, content_hash, image_faces, video_face_track
from mllm.face.regions import REGION_NAMES, REGIONS
from mllm.face.tracking import FaceTrack, SubjectTracker, TrackerSettings, track_subject

__all__ = [
    "REGIONS",
    "REGION_NAMES",
    "AlignedFace",
    "DetectorSettings",
    "Face",
    "FaceCache",
    "FaceDetector",
    "FaceTrack",
    "SubjectTracker",
    "TrackerSettings",
    "align_face",
    "box_iou",
    "content_hash",
    "image_faces",
    "similarity_matrix",
    "track_subject",
    "video_face_track",
]
