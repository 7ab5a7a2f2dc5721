#!/usr/bin/env python3
"""Generates examples/inventory.yaml: an example fleet drawn from Apple's real catalog.

Every device id, OS version and build comes from Apple's Software Lookup Service snapshots
in tests/fixtures/gdmf/ (pmv-*.json): a device only runs a (version, build) that some
snapshot lists for its device id. Macs carry both a model identifier (Mac14,2) and a
software-update device id (board id, J413AP); the pairing table below is NOT in the
fixtures (gdmf has board ids only, SOFA's feed has model identifiers only) and is checked
here only for consistency: the board id must be in the shipped catalog and must top out at
the same macOS major as SOFA's feed says the model does.

Deterministic: a fixed seed, sorted inputs, no clock. Run from the repository root:

    python3 examples/tools/gen_inventory.py > examples/inventory.yaml

`--check` compares the output with the committed file and exits 1 when they differ.
Python 3.11 standard library only.
"""

from __future__ import annotations

import glob
import json
import os
import random
import sys

SEED = 20260822
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SNAPSHOTS = os.path.join(ROOT, "tests", "fixtures", "gdmf")
CATALOG = os.path.join(ROOT, "examples", "catalog", "pmv.json")
SOFA_MACOS = os.path.join(ROOT, "..", "shared", "fixtures", "sofa", "macos_data_feed-2026-08-22.json")
OUTPUT = os.path.join(ROOT, "examples", "inventory.yaml")

# Model identifier -> board id (software-update device id). From public model lists, not
# from the fixtures; see examples/README.md. The Mac17,x rows follow the naming pattern of
# their predecessors and are the least certain.
MAC_BOARDS = {
    # Intel with T2
    "MacBookAir8,1": "J140KAP",
    "MacBookAir8,2": "J140AAP",
    "MacBookAir9,1": "J230KAP",
    "MacBookPro15,2": "J132AP",
    "MacBookPro15,4": "J213AP",
    "MacBookPro16,1": "J152FAP",
    "MacBookPro16,2": "J214KAP",
    "MacBookPro16,3": "J223AP",
    "Macmini8,1": "J174AP",
    "iMac20,1": "J185AP",
    "iMacPro1,1": "J137AP",
    "MacPro7,1": "J160AP",
    # Apple silicon
    "MacBookAir10,1": "J313AP",
    "MacBookPro17,1": "J293AP",
    "Macmini9,1": "J274AP",
    "iMac21,1": "J456AP",
    "MacBookPro18,1": "J316sAP",
    "MacBookPro18,2": "J316cAP",
    "MacBookPro18,3": "J314sAP",
    "MacBookPro18,4": "J314cAP",
    "Mac13,1": "J375cAP",
    "Mac14,2": "J413AP",
    "Mac14,7": "J493AP",
    "Mac14,3": "J473AP",
    "Mac14,9": "J414sAP",
    "Mac14,10": "J416sAP",
    "Mac14,15": "J415AP",
    "Mac14,13": "J475cAP",
    "Mac15,3": "J504AP",
    "Mac15,6": "J514sAP",
    "Mac15,7": "J516sAP",
    "Mac15,12": "J613AP",
    "Mac15,13": "J615AP",
    "Mac16,1": "J604AP",
    "Mac16,8": "J614sAP",
    "Mac16,7": "J616sAP",
    "Mac16,10": "J773gAP",
    "Mac16,12": "J713AP",
    "Mac16,13": "J715AP",
    "Mac17,2": "J704AP",
    "Mac17,3": "J813AP",
    "Mac17,5": "J700AP",
    # Apple's virtual machine: the pairing Zentral's real DeviceInformation shows.
    "VirtualMac2,1": "VMA2MACOSAP",
}

# How common each Mac model is in this fleet (laptops dominate, a few desktops).
MAC_WEIGHTS = {
    "MacBookAir10,1": 8, "MacBookPro17,1": 3, "Macmini9,1": 2, "iMac21,1": 2,
    "MacBookPro18,1": 4, "MacBookPro18,2": 2, "MacBookPro18,3": 5, "MacBookPro18,4": 2,
    "Mac13,1": 1, "Mac14,2": 9, "Mac14,7": 3, "Mac14,3": 2, "Mac14,9": 4, "Mac14,10": 3,
    "Mac14,15": 4, "Mac14,13": 1, "Mac15,3": 4, "Mac15,6": 4, "Mac15,7": 3, "Mac15,12": 7,
    "Mac15,13": 4, "Mac16,1": 5, "Mac16,8": 4, "Mac16,7": 2, "Mac16,10": 2, "Mac16,12": 6,
    "Mac16,13": 3, "Mac17,2": 3, "Mac17,3": 3, "Mac17,5": 2,
    "MacBookAir8,1": 1, "MacBookAir8,2": 1, "MacBookAir9,1": 2, "MacBookPro15,2": 1,
    "MacBookPro15,4": 1, "MacBookPro16,1": 2, "MacBookPro16,2": 2, "MacBookPro16,3": 1,
    "Macmini8,1": 1, "iMac20,1": 1, "iMacPro1,1": 1, "MacPro7,1": 1,
}

SITES = ["berlin", "london", "austin", "singapore"]
DEPARTMENTS = ["engineering", "sales", "finance", "support", "design", "operations"]
SERIAL_ALPHABET = "CDFGHJKLMNPQRTVWXY0123456789"


def version_key(version: str) -> tuple:
    numeric, _, extra = version.partition(" ")
    parts = [int(p) for p in numeric.split(".")]
    while len(parts) < 3:
        parts.append(0)
    return (tuple(parts), extra)


def load_releases() -> dict[str, set[tuple[str, str, str | None]]]:
    """device id -> {(version with extra, build, prerequisite build)} over every snapshot."""
    releases: dict[str, set] = {}
    files = sorted(
        f for f in glob.glob(os.path.join(SNAPSHOTS, "pmv-*.json"))
        if not f.endswith(".sofa-cache.json") and "empty" not in f
    )
    for path in files:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        for set_name in ("AssetSets", "PublicAssetSets", "PublicRapidSecurityResponses",
                         "PublicBackgroundSecurityImprovements"):
            for entries in (doc.get(set_name) or {}).values():
                for entry in entries:
                    build = entry.get("Build")
                    if not build:
                        continue
                    version = entry["ProductVersion"]
                    if entry.get("ProductVersionExtra"):
                        version += " " + entry["ProductVersionExtra"]
                    for device in entry.get("SupportedDevices", []):
                        releases.setdefault(device.strip(), set()).add(
                            (version, build, entry.get("PrerequisiteBuild")))
    return releases


def catalog_device_ids() -> set[str]:
    with open(CATALOG, encoding="utf-8") as fh:
        doc = json.load(fh)
    ids = set()
    for set_name in ("AssetSets", "PublicAssetSets"):
        for entries in (doc.get(set_name) or {}).values():
            for entry in entries:
                ids.update(d.strip() for d in entry.get("SupportedDevices", []))
    return ids


def check_mac_pairs(releases, catalog_ids) -> None:
    """Board ids are real catalog ids; each pair tops out at the major SOFA gives the model."""
    sofa_models = {}
    if os.path.exists(SOFA_MACOS):
        with open(SOFA_MACOS, encoding="utf-8") as fh:
            sofa_models = json.load(fh)["Models"]
    for model, board in MAC_BOARDS.items():
        if board not in catalog_ids:
            sys.exit(f"{model}: board id {board} is not in {CATALOG}")
        if model in sofa_models:
            sofa_max = max(sofa_models[model]["OSVersions"])
            gdmf_max = max(version_key(v)[0][0] for v, _, _ in releases[board])
            if sofa_max != gdmf_max:
                sys.exit(f"{model} ({board}): SOFA says macOS {sofa_max}, gdmf {gdmf_max}")


class Fleet:
    def __init__(self, releases):
        self.rng = random.Random(SEED)
        self.releases = releases
        self.devices: list[dict] = []
        self.serials: set[str] = set()
        self.ids: set[str] = set()

    def serial(self) -> str:
        while True:
            s = "".join(self.rng.choice(SERIAL_ALPHABET) for _ in range(10))
            if s not in self.serials:
                self.serials.add(s)
                return s

    def udid(self, chip: str | None) -> str:
        while True:
            if chip is None:  # Intel Mac: an RFC 4122 UUID
                h = "".join(self.rng.choice("0123456789ABCDEF") for _ in range(32))
                variant = "89AB"[int(h[16], 16) % 4]
                value = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"
            else:  # Apple silicon and iOS: ECID form
                value = chip + "-" + "".join(self.rng.choice("0123456789ABCDEF") for _ in range(16))
            if value not in self.ids:
                self.ids.add(value)
                return value

    def pick_release(self, device_id: str, major: int | None = None,
                     at_most: str | None = None) -> tuple[str, str]:
        """A (version, build) the catalog listed for the device, without security extras."""
        options = sorted(
            (v, b) for v, b, _ in self.releases[device_id]
            if " " not in v
            and (major is None or version_key(v)[0][0] == major)
            and (at_most is None or version_key(v) <= version_key(at_most))
        )
        if not options:
            raise SystemExit(f"no release for {device_id} major {major}")
        # Recent releases are more common than old ones: weight by rank.
        versions = sorted({v for v, _ in options}, key=version_key)
        weights = [i + 1 for i in range(len(versions))]
        version = self.rng.choices(versions, weights=weights)[0]
        builds = sorted(b for v, b in options if v == version)
        return version, self.rng.choice(builds)

    def majors_of(self, device_id: str) -> list[int]:
        return sorted({version_key(v)[0][0] for v, _, _ in self.releases[device_id]})

    def add(self, **device) -> dict:
        self.devices.append(device)
        return device


def labels(rng, fleet: str, **extra) -> dict[str, str]:
    out = {"fleet": fleet, "site": rng.choice(SITES), "department": rng.choice(DEPARTMENTS)}
    out.update(extra)
    return out


# The chip part of an ECID-style UDID, by iPhone family (other devices share one value).
IPHONE_CHIPS = {10: "00008015", 11: "00008020", 12: "00008030", 13: "00008101",
                14: "00008110", 15: "00008120", 16: "00008130", 17: "00008140", 18: "00008150"}
INTEL_MACS = ("MacBookAir8,", "MacBookAir9,", "MacBookPro15,", "MacBookPro16,", "Macmini8,",
              "iMac20,", "iMacPro1,", "MacPro7,")


def ios_chip(product_type: str) -> str:
    if product_type.startswith("iPhone"):
        return IPHONE_CHIPS.get(int(product_type[6:].split(",")[0]), "00008103")
    return "00008103"


def build_fleet(releases, catalog_ids) -> list[dict]:
    fleet = Fleet(releases)
    rng = fleet.rng

    # --- Macs -------------------------------------------------------------------------------
    models = sorted(MAC_WEIGHTS)
    for _ in range(126):
        model = rng.choices(models, weights=[MAC_WEIGHTS[m] for m in models])[0]
        board = MAC_BOARDS[model]
        majors = [m for m in fleet.majors_of(board) if m >= 14]
        top = majors[-1]
        # Most Macs run their newest major; some lag one or two behind.
        roll = rng.random()
        major = top if roll < 0.7 or len(majors) == 1 else (
            majors[-2] if roll < 0.93 or len(majors) == 2 else majors[-3])
        version, build = fleet.pick_release(board, major)
        apple_silicon = not model.startswith(INTEL_MACS)
        fleet.add(
            enrollmentId=fleet.udid("00008112" if apple_silicon else None),
            serialNumber=fleet.serial(),
            platform="macOS",
            model=model,
            softwareUpdateDeviceId=board,
            osVersion=version,
            buildVersion=build,
            supervised=True,
            enrollmentType="ade",
            labels=labels(rng, "corporate"),
        )

    # --- iPhones ----------------------------------------------------------------------------
    iphones = sorted(
        d for d in catalog_ids
        if d.startswith("iPhone") and max(fleet.majors_of(d)) >= 18
    )
    for i in range(104):
        product = rng.choice(iphones)
        majors = [m for m in fleet.majors_of(product) if m >= 17]
        major = majors[-1] if rng.random() < 0.75 or len(majors) == 1 else majors[-2]
        version, build = fleet.pick_release(product, major)
        supervised = rng.random() < 0.8
        extra = {"role": "vip"} if i % 13 == 0 else {}
        fleet.add(
            enrollmentId=fleet.udid(ios_chip(product)),
            serialNumber=fleet.serial(),
            platform="iOS",
            model=product,
            osVersion=version,
            buildVersion=build,
            supervised=supervised,
            enrollmentType="ade" if supervised else "device",
            labels=labels(rng, "corporate", **extra),
        )

    # --- iPads ------------------------------------------------------------------------------
    ipads = sorted(
        d for d in catalog_ids
        if d.startswith("iPad") and max(fleet.majors_of(d)) >= 17
    )
    for _ in range(52):
        product = rng.choice(ipads)
        majors = [m for m in fleet.majors_of(product) if m >= 17]
        major = majors[-1] if rng.random() < 0.7 or len(majors) == 1 else majors[-2]
        version, build = fleet.pick_release(product, major)
        kiosk = rng.random() < 0.25
        fleet.add(
            enrollmentId=fleet.udid(ios_chip(product)),
            serialNumber=fleet.serial(),
            platform="iPadOS",
            model=product,
            osVersion=version,
            buildVersion=build,
            supervised=True,
            enrollmentType="ade",
            labels=labels(rng, "corporate", **({"role": "kiosk"} if kiosk else {})),
        )

    # --- Apple TV, Vision Pro, Watch, virtual Macs -------------------------------------------
    for product, version_major in [("AppleTV14,1", 26), ("AppleTV14,1", 26), ("AppleTV11,1", 26),
                                   ("AppleTV6,2", 18)]:
        version, build = fleet.pick_release(product, version_major)
        if version_major == 18:
            version, build = fleet.pick_release(product, 18, at_most="18.6")
        fleet.add(
            enrollmentId=fleet.udid(ios_chip(product)),
            serialNumber=fleet.serial(),
            platform="tvOS",
            model=product,
            osVersion=version,
            buildVersion=build,
            supervised=True,
            enrollmentType="ade",
            labels={"fleet": "corporate", "site": rng.choice(SITES), "role": "meeting-room"},
        )
    version, build = fleet.pick_release("RealityDevice14,1", 26, at_most="26.5")
    fleet.add(
        enrollmentId=fleet.udid("00008112"),
        serialNumber=fleet.serial(),
        platform="visionOS",
        model="RealityDevice14,1",
        osVersion=version,
        buildVersion=build,
        supervised=True,
        enrollmentType="ade",
        labels={"fleet": "corporate", "site": "berlin", "department": "design"},
    )
    version, build = fleet.pick_release("Watch7,3", 26, at_most="26.5")
    fleet.add(
        enrollmentId=fleet.udid("00008301"),
        serialNumber=fleet.serial(),
        platform="watchOS",
        model="Watch7,3",
        osVersion=version,
        buildVersion=build,
        supervised=True,
        enrollmentType="ade",
        labels={"fleet": "corporate", "site": "london", "department": "operations"},
    )
    for _ in range(2):
        version, build = fleet.pick_release("VMA2MACOSAP", 26, at_most="26.6")
        fleet.add(
            enrollmentId=fleet.udid("0000FE00"),
            platform="macOS",
            model="VirtualMac2,1",
            softwareUpdateDeviceId="VMA2MACOSAP",
            osVersion=version,
            buildVersion=build,
            supervised=False,
            enrollmentType="device",
            labels={"fleet": "ci", "site": "berlin", "department": "engineering"},
        )

    # --- Bring your own device: user enrollments --------------------------------------------
    for product in ["iPhone17,1", "iPhone16,2"]:
        version, build = fleet.pick_release(product, 26)
        fleet.add(
            enrollmentId=fleet.udid(None).lower(),
            platform="iOS",
            model=product,
            osVersion=version,
            buildVersion=build,
            supervised=False,
            enrollmentType="user",
            labels=labels(rng, "byod"),
        )
    version, build = fleet.pick_release("J613AP", 26)
    fleet.add(
        enrollmentId=fleet.udid(None).lower(),
        platform="macOS",
        model="Mac15,12",
        softwareUpdateDeviceId="J613AP",
        osVersion=version,
        buildVersion=build,
        supervised=False,
        enrollmentType="user",
        labels=labels(rng, "byod"),
    )

    # --- Edge cases: each carries a `case` label that names it (see examples/README.md) ------
    def edge(case: str, **device):
        device.setdefault("enrollmentId", fleet.udid("00008112"))
        device.setdefault("serialNumber", fleet.serial())
        device.setdefault("supervised", True)
        device.setdefault("enrollmentType", "ade")
        device["labels"] = labels(rng, "corporate", case=case, **device.pop("extra", {}))
        fleet.add(**device)

    def real(device_id: str, version: str, build: str) -> tuple[str, str]:
        base = version.split(" ")[0]
        listed = {(v.split(" ")[0], b) for v, b, _ in releases[device_id]}
        if (base, build) not in listed:
            sys.exit(f"{device_id} never had {version} ({build})")
        return version, build

    # Enrolled this morning: the Mac has not reported its board id yet.
    version, build = real("J413AP", "15.6", "24G84")
    edge("no-board-id", platform="macOS", model="Mac14,2", osVersion=version, buildVersion=build)
    # Enrolled with a profile, not through ADE: macOS enforcement needs supervision.
    version, build = real("J613AP", "15.7.4", "24G517")
    edge("unsupervised-mac", platform="macOS", model="Mac15,12", softwareUpdateDeviceId="J613AP",
         osVersion=version, buildVersion=build, supervised=False, enrollmentType="device")
    # macOS 13 has no software-update declarations.
    version, build = real("J274AP", "13.7.8", "22H730")
    edge("macos-13", platform="macOS", model="Macmini9,1", softwareUpdateDeviceId="J274AP",
         osVersion=version, buildVersion=build)
    # iPhone X stops at iOS 16: no software-update declarations before iOS 17.
    version, build = real("iPhone10,3", "16.7.10", "20H350")
    edge("ios-16", platform="iOS", model="iPhone10,3", osVersion=version, buildVersion=build)
    # Already on the newest release the catalog offers.
    version, build = real("iPhone17,1", "26.6.1", "23G83")
    edge("up-to-date", platform="iOS", model="iPhone17,1", osVersion=version, buildVersion=build)
    version, build = real("J604AP", "26.6.2", "25G83")
    edge("up-to-date", platform="macOS", model="Mac16,1", softwareUpdateDeviceId="J604AP",
         osVersion=version, buildVersion=build)
    # Running a Background Security Improvement: base build plus the `(a)` extra.
    version, build = real("iPhone16,1", "26.3.1", "23D8133")
    edge("security-improvement", platform="iOS", model="iPhone16,1", osVersion=version,
         supplementalExtra="(a)", buildVersion=build)
    version, build = real("J413AP", "26.3.1", "25D2128")
    edge("security-improvement", platform="macOS", model="Mac14,2",
         softwareUpdateDeviceId="J413AP", osVersion=version, supplementalExtra="(a)",
         buildVersion=build)
    # VIPs covered by the emergency EnforcementTarget: one already on 26.x (the policy's later
    # enforcement is superseded), one still on 18.x (both enforcements stay).
    version, build = real("iPhone17,2", "26.5", "23F77")
    edge("vip-on-26", platform="iOS", model="iPhone17,2", osVersion=version, buildVersion=build,
         extra={"role": "vip"})
    version, build = real("iPhone15,3", "18.6.2", "22G100")
    edge("vip-on-18", platform="iOS", model="iPhone15,3", osVersion=version, buildVersion=build,
         extra={"role": "vip"})
    # An iPad that stops at iPadOS 17: latest-minor keeps it within 17.
    version, build = real("iPad7,5", "17.7.10", "21H450")
    edge("ipados-17", platform="iPadOS", model="iPad7,5", osVersion=version, buildVersion=build)
    # tvOS before 18.4 has no software-update declarations.
    version, build = real("AppleTV6,2", "18.3", "22K557")
    edge("tvos-18-3", platform="tvOS", model="AppleTV6,2", osVersion=version, buildVersion=build,
         extra={"role": "meeting-room"})
    return fleet.devices


KEY_ORDER = ["enrollmentId", "serialNumber", "platform", "model", "softwareUpdateDeviceId",
             "osVersion", "supplementalExtra", "buildVersion", "supervised", "enrollmentType",
             "labels"]


def quote(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value))  # a JSON string is a YAML string


def render(devices: list[dict]) -> str:
    counts: dict[str, int] = {}
    for d in devices:
        counts[d["platform"]] = counts.get(d["platform"], 0) + 1
    summary = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
    lines = [
        "# Example device inventory for `ddm-update-operator plan` (see examples/README.md).",
        "# GENERATED by examples/tools/gen_inventory.py (seed %d); do not edit by hand." % SEED,
        "# Every device id, version and build is one Apple's catalog listed for that device in",
        "# tests/fixtures/gdmf/. Mac model -> board id pairs are from public model lists.",
        f"# {len(devices)} devices: {summary}.",
        "devices:",
    ]
    for device in devices:
        first = True
        for key in KEY_ORDER:
            if key not in device:
                continue
            prefix = "  - " if first else "    "
            first = False
            value = device[key]
            if key == "labels":
                lines.append(f"{prefix}labels:")
                for k in sorted(value):
                    lines.append(f"      {k}: {quote(value[k])}")
            else:
                lines.append(f"{prefix}{key}: {quote(value)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    releases = load_releases()
    catalog_ids = catalog_device_ids()
    check_mac_pairs(releases, catalog_ids)
    text = render(build_fleet(releases, catalog_ids))
    if "--check" in sys.argv[1:]:
        with open(OUTPUT, encoding="utf-8") as fh:
            if fh.read() != text:
                sys.exit(f"{OUTPUT} is not what the generator writes; regenerate it")
        return
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
