"""Which mirror the fresh-Debian test builds its tree from: the host's own apt sources, read exactly."""

from support.debian_rootfs import mirror

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_a_deb822_paragraph_that_serves_the_suite_gives_its_first_uri():
    assert mirror([("debian.sources", DEB822)]) == "http://mirror.example/debian"


def test_disabled_paragraphs_source_packages_and_other_suites_are_passed_over():
    sources = (
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n"
    )
    assert mirror([("a.sources", sources)]) is None


def test_one_line_entries_with_options_and_comments():
    sources = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://list.example/debian bookworm main\n"
    )
    assert mirror([("sources.list", sources)]) == "http://list.example/debian"


def test_files_are_read_in_order_and_an_empty_machine_has_none():
    first = ("sources.list", "deb http://first.example/debian bookworm main\n")
    assert mirror([first, ("debian.sources", DEB822)]) == "http://first.example/debian"
    assert mirror([]) is None
