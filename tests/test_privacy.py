"""Privacy: no patient identifier reaches a dataset unless the user opts in.

A real DICOM (pydicom's CT_small.dcm) is given distinctive identifiers, annotated through the
widget (plugin reader, tiny checkpoint, Save annotation) and through the core writer, and every
byte of every file in the dataset folder is searched for each identifier in the spellings it
could take (as stored, any case, "Family^Given" split and reordered, dates reformatted, UTF-16,
plain hashes). Keys must be HMACs with this user's secret, kept outside the dataset.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from lsms_core.dataset import AnnotationDataset
from lsms_core.dataset.validate import validate_dataset
from lsms_core.dicom import read_dicom_slice as read_dicom  # one DICOM slice (a Slice)
from lsms_core.privacy import dicom_identifiers, pseudonymous_key, secret_path, user_secret
from lsms_napari.widget import ReferringLesionSegmentWidget
from lsms_napari.widget.widget import CHECKPOINT_FILE

SECRET = "privacy-test-secret"
IDENTIFIERS = {
    "PatientName": "Zyxwvut^Quenby",
    "PatientID": "QZ-PID-7734921",
    "PatientBirthDate": "19230517",
    "AccessionNumber": "ACC99218877",
    "InstitutionName": "Saint Wolfgang Leakcheck Infirmary",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.24681357902468135790",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.13579246801357924680",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.97531864209753186420",
}
FILE_NAME = "Zyxwvut_Quenby_CT.dcm"  # files exported by name are common; the name must not leak either


@pytest.fixture
def dicom_file(tmp_path) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = IDENTIFIERS["SOPInstanceUID"]
    folder = tmp_path / "incoming"
    folder.mkdir()
    ds.save_as(folder / FILE_NAME)
    return folder / FILE_NAME


def _spellings(keyword: str, value: str) -> set[str]:
    """Every form of an identifier to search for (compared case-insensitively)."""
    forms = {value, value.replace("-", ""), value.replace(" ", "")}
    if keyword == "PatientName":
        family, given = value.split("^")
        forms |= {family, given, f"{given} {family}", f"{family} {given}", f"{family}, {given}",
                  f"{family}_{given}", f"{given}_{family}"}
    if keyword == "PatientBirthDate":
        y, m, d = value[:4], value[4:6], value[6:]
        forms |= {f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}"}
    return forms


def _leaks(root: Path, identifiers: dict[str, str]) -> list[str]:
    """'file: what' for every identifier (or plain hash of one) found in any file under ``root``."""
    needles: list[tuple[str, bytes]] = [(Path(FILE_NAME).stem, Path(FILE_NAME).stem.lower().encode())]
    for keyword, value in identifiers.items():
        for form in _spellings(keyword, value):
            needles.append((f"{keyword} as {form!r}", form.lower().encode()))
            needles.append((f"{keyword} as UTF-16 {form!r}", form.lower().encode("utf-16-le")))
        for name in ("sha256", "sha1", "md5"):
            digest = hashlib.new(name, value.encode()).hexdigest()
            needles.append((f"plain {name} of {keyword}", digest[:16].encode()))
    found = []
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"nothing was written under {root}"
    for path in files:
        data = path.read_bytes().lower()
        found += [f"{path.relative_to(root)}: {what}" for what, needle in needles if needle in data]
    return found


@pytest.fixture
def widget_on_dicom(make_napari_viewer, monkeypatch, tiny_checkpoint, dicom_file, tmp_path):
    monkeypatch.setenv("LSMS_NAPARI_SECRET", SECRET)
    viewer = make_napari_viewer()
    [image] = viewer.open(str(dicom_file), plugin="lsms-napari")
    widget = ReferringLesionSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.model_combo.setCurrentText(CHECKPOINT_FILE)
    widget.checkpoint_path.setText(str(tiny_checkpoint))
    return viewer, widget, image


def _segment_and_save(qtbot, viewer, widget, dataset: Path):
    from napari.layers import Labels

    before = len([l for l in viewer.layers if isinstance(l, Labels)])
    widget.expression.setText("the largest lesion")
    qtbot.mouseClick(widget.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len([l for l in viewer.layers if isinstance(l, Labels)]) == before + 1, timeout=120_000)
    widget.dataset_path.setText(str(dataset))
    assert widget.save() is not None, widget.data_status.text()
    qtbot.waitUntil(lambda: not widget._saving, timeout=60_000)
    assert "Saved" in widget.data_status.text(), widget.data_status.text()
    assert [str(p) for p in validate_dataset(dataset) if p.severity == "error"] == []
    return AnnotationDataset.open(dataset).records[-1]


def test_widget_saves_no_identifier_unless_asked(qtbot, widget_on_dicom, tmp_path):
    viewer, widget, image = widget_on_dicom
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName"):
        assert IDENTIFIERS[keyword].lower() not in repr(image.metadata).lower()  # the layer holds keys only
    assert not widget.include_identifiers.isChecked()  # off by default
    assert "identifiers" in widget.include_identifiers.toolTip()
    assert "PatientName" in widget.include_identifiers.toolTip()

    plain = tmp_path / "plain"
    record = _segment_and_save(qtbot, viewer, widget, plain)
    assert _leaks(plain, IDENTIFIERS) == []
    assert "identifiers" not in record
    secret = SECRET.encode()
    assert record["patient_key"] == pseudonymous_key(IDENTIFIERS["PatientID"], "p", secret=secret)
    assert record["split_group"] == record["patient_key"]
    assert record["source"]["sop_uid_hash"] == pseudonymous_key(IDENTIFIERS["SOPInstanceUID"], "u", secret=secret)
    assert not _leaks(plain, {"secret": SECRET})  # the secret stays outside the dataset

    # Opted in: the identifiers are stored, verbatim, under "identifiers" (and the scan finds them).
    widget.include_identifiers.setChecked(True)
    opted = tmp_path / "with-identifiers"
    record = _segment_and_save(qtbot, viewer, widget, opted)
    assert "with patient identifiers" in widget.data_status.text()
    assert {k: record["identifiers"][k] for k in IDENTIFIERS} == IDENTIFIERS
    assert any("PatientID" in leak for leak in _leaks(opted, IDENTIFIERS))


def test_core_writer_stores_identifiers_only_when_asked(dicom_file, tmp_path, monkeypatch):
    monkeypatch.setenv("LSMS_NAPARI_SECRET", SECRET)
    ct = read_dicom(dicom_file)
    found = dicom_identifiers(dicom_file)
    assert {k: found[k] for k in IDENTIFIERS} == IDENTIFIERS
    mask = np.zeros(ct.shape, bool)
    mask[40:60, 50:70] = True
    roots = {False: tmp_path / "off", True: tmp_path / "on"}
    for include, root in roots.items():
        dataset = AnnotationDataset.create(root)
        record = dataset.add(ct.pixels, mask, "the largest lesion", split_group=ct.patient_key,
                             patient_key=ct.patient_key, modality=ct.modality, units="HU",
                             source={"sop_uid_hash": pseudonymous_key(ct.sop_instance_uid, "u")},
                             identifiers=found, include_identifiers=include)
        problems = validate_dataset(root)
        assert [str(p) for p in problems if p.severity == "error"] == []
        assert any("hold patient identifiers" in str(p) for p in problems) == include  # a warning before sharing
        assert ("identifiers" in record) == include
        assert ("identifiers" in AnnotationDataset.open(root).records[0]) == include
    assert _leaks(roots[False], IDENTIFIERS) == []
    assert AnnotationDataset.open(roots[True]).records[0]["identifiers"]["PatientName"] == "Zyxwvut^Quenby"
    assert any("PatientBirthDate" in leak for leak in _leaks(roots[True], IDENTIFIERS))


def test_keys_are_hmacs_with_a_secret_kept_outside_the_dataset(tmp_path, monkeypatch):
    patient = IDENTIFIERS["PatientID"]
    one, two = pseudonymous_key(patient, secret=b"user one"), pseudonymous_key(patient, secret=b"user two")
    assert one != two  # another user's secret: another key
    assert one == pseudonymous_key(patient, secret=b"user one")  # stable for one user
    for name in ("sha256", "sha1", "md5", "blake2b"):
        digest = hashlib.new(name, patient.encode()).hexdigest()
        assert one[2:] not in digest, f"the key is a plain {name} of the ID: anyone could reverse it by guessing"
    # Without LSMS_NAPARI_SECRET: 32 random bytes in the user's config folder, readable by the user only.
    monkeypatch.delenv("LSMS_NAPARI_SECRET", raising=False)
    keys = []
    for user in ("alice", "bob"):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / user / ".config"))
        secret = user_secret()
        assert len(secret) == 64 and user_secret() == secret
        assert stat.S_IMODE(os.stat(secret_path()).st_mode) == 0o600
        keys.append(pseudonymous_key(patient))
    assert keys[0] != keys[1]


# --- issue 15 item 7: weak or racing secrets -------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\n", b"   \n", b"short-secret\n", b"0123456789abcde"])
def test_an_empty_or_short_secret_file_is_refused(tmp_path, monkeypatch, content):
    """An existing empty secret made every key HMAC(b"", PatientID): computable by anyone."""
    from lsms_core.privacy import MIN_SECRET_BYTES, SecretError

    monkeypatch.delenv("LSMS_NAPARI_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    secret_path().parent.mkdir(parents=True)
    secret_path().write_bytes(content)
    os.utime(secret_path(), (1, 1))  # an old file: not one being written right now
    with pytest.raises(SecretError) as caught:
        user_secret()
    message = str(caught.value)
    assert str(secret_path()) in message and f"at least {MIN_SECRET_BYTES}" in message and "\n" not in message
    assert "delete it" in message and "LSMS_NAPARI_SECRET" in message
    with pytest.raises(SecretError):
        pseudonymous_key("QZ-PID-7734921")
    assert secret_path().read_bytes() == content  # never replaced behind the user's back


def test_an_empty_secret_gives_a_clear_error_when_reading_dicom(tmp_path, monkeypatch, dicom_file):
    from lsms_core.preprocessing import ImageError

    monkeypatch.delenv("LSMS_NAPARI_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    secret_path().parent.mkdir(parents=True)
    secret_path().write_bytes(b"")
    os.utime(secret_path(), (1, 1))
    with pytest.raises(ImageError, match="secret") as caught:
        read_dicom(dicom_file)
    assert "damaged" not in str(caught.value)


def test_a_secret_file_of_16_bytes_or_more_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.delenv("LSMS_NAPARI_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    secret_path().parent.mkdir(parents=True)
    secret_path().write_bytes(b"my own secret 16\n")
    assert user_secret() == b"my own secret 16"


def _race_for_the_secret(config_homes, barrier, results) -> None:
    import traceback

    os.environ.pop("LSMS_NAPARI_SECRET", None)
    for home in config_homes:
        os.environ["XDG_CONFIG_HOME"] = home
        barrier.wait(30)
        try:
            results.put((home, pseudonymous_key("QZ-PID-7734921")))
        except BaseException:  # noqa: BLE001 - reported to the test
            results.put((home, traceback.format_exc()))


def test_two_processes_creating_the_first_secret_agree(tmp_path):
    """Two processes creating the secret at once: one failed with FileExistsError, or read the file before
    the other had written it (an empty secret: two keys for one patient)."""
    import multiprocessing

    rounds = 40
    homes = [str(tmp_path / f"home{i}") for i in range(rounds)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_race_for_the_secret, args=(homes, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes: dict[str, list[str]] = {}
    for _ in range(2 * rounds):
        home, outcome = results.get(timeout=120)
        outcomes.setdefault(home, []).append(outcome)
    for worker in workers:
        worker.join(60)
    failures = [o for pair in outcomes.values() for o in pair if not o.startswith("p-")]
    assert failures == [], failures[0]
    assert all(len(set(pair)) == 1 for pair in outcomes.values())
    for home in homes:  # one complete secret each, no temporary file left
        folder = Path(home) / "lsms-napari"
        assert [p.name for p in folder.iterdir()] == ["secret"]
        assert len((folder / "secret").read_text().strip()) == 64
