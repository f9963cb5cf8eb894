"""Where the panel sends a job's output: a sequence pattern, or a folder for folder pipelines (story)."""
from cinegen.common.connection import ConnectionSettings
from cinegen.plugin.backend.drafting import plan_output


def test_sequence_pipelines_get_a_versioned_frame_pattern(tmp_path):
    place = plan_output({}, settings=ConnectionSettings(), output_root=tmp_path, name="sh010_image")
    assert place.local_output.endswith("sh010_image_v001.####.exr")
    assert place.claimed_folder == str(tmp_path / "sh010_image" / "v001")


def test_folder_pipelines_get_the_version_folder_itself(tmp_path):
    place = plan_output({}, settings=ConnectionSettings(), output_root=tmp_path, name="sh010_story",
                        folder_output=True)
    assert place.local_output == place.claimed_folder == str(tmp_path / "sh010_story" / "v001")


def test_the_server_says_which_pipelines_write_folders(client):
    flags = {p.name: p.output_is_folder for p in client.capabilities().pipelines}
    assert flags["image"] is False
    if "story" in flags:
        assert flags["story"] is True
