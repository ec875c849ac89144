# Shared locations of the image build. The cache outlives checkouts so that CI re-runs on the same machine
# reuse the tools tree, the package downloads and finished images.
MKOSI_CACHE="${CONSTELLATION_CACHE:-/var/cache/constellation}/mkosi"
MKOSI_TOOLS="$MKOSI_CACHE/tools-trixie"
# Downloaded .debs, shared by every build so that two builds see the same packages.
MKOSI_PACKAGES="$MKOSI_CACHE/packages"
# Finished images, one directory per input hash.
MKOSI_IMAGES="$MKOSI_CACHE/images"
