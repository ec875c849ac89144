"""PackageMetadataInfo: the provider package_metadata targets return."""

PackageMetadataInfo = provider(
    doc = "Metadata about a package (a Bazel repository), written to a JSON file.",
    fields = {
        "metadata": "File: JSON with the package URL (purl) and attributes.",
        "files": "depset of File: every file the metadata refers to.",
    },
)
