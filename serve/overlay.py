"""The frames a request's media gave the model, with the face box, 68 landmarks and regions drawn over them: one
picture per image or video (an audio file has none). The demo shows it beside the answer; `emoreason analyze
--overlay` writes it.

The processor's own decoding and face tracking are repeated with its settings (frames per clip, seconds, detector),
so the picture shows the same frames; the face cache makes the tracking a lookup.
"""

from __future__ import annotations

from pathlib import Path


def frames_used(processor, media: str | Path, limits: dict | None = None, tile_width: int = 240):
    """A PIL image of what the model saw in `media` (a file path), or None for audio."""
    from mllm.face import DetectorSettings, image_faces, video_face_track
    from mllm.face.draw import contact_sheet, overlay_image
    from mllm.media import load_image, load_video, media_kind

    media = str(media)
    kind = media_kind(media)
    if kind == "image":
        rgb = load_image(media)
        settings = DetectorSettings(min_face_fraction=0.0, detector=processor.face_detector)
        faces = image_faces(media, settings=settings, image=rgb, cache=processor.face_cache)
        return overlay_image(rgb, [(f.box, f.landmarks_68, f.primary) for f in faces])
    if kind != "video":
        return None
    request = processor._request_limits(limits)
    clip = load_video(media, num_frames=request.frames, end_s=request.seconds, with_audio=False)
    track = video_face_track(
        media,
        num_frames=request.frames,
        end_s=request.seconds,
        settings=processor.tracker_settings(),
        video=clip,
        cache=processor.face_cache,
    )
    return contact_sheet(clip.frames, track, columns=4, tile_width=tile_width)
