// Package verity verifies (and, for tests and tooling, creates) dm-verity hash trees in userspace, so that
// a root file system can be checked against the root hash from the kernel command line (`roothash=`)
// on a machine without device-mapper, before it is mounted read-only.
//
// # On-disk format
//
// The format is the one libcryptsetup writes for crypt_format(CRYPT_VERITY) and veritysetup format, which
// is what systemd-repart produces for a Verity=hash partition (see "What systemd-repart writes" below).
//
// Hash device, with a superblock (the default):
//
//	offset 0          512-byte superblock (below)
//	offset 512 ..     zero up to the next multiple of the hash block size (not read by anyone)
//	offset H          the hash tree, H = roundup(512, hash block size), i.e. 4096 for 4 KiB blocks
//
// Without a superblock (veritysetup --no-superblock), the tree starts at the hash offset (0) and every
// parameter, the salt included, must be known from elsewhere.
//
// Superblock (all integers little-endian; libcryptsetup lib/verity/verity.c, struct verity_sb):
//
//	0   [8]  signature "verity\0\0"
//	8   u32  version, 1
//	12  u32  hash type: 1 is the normal format (0, Chrome OS's, is not supported here)
//	16  [16] UUID of the hash device
//	32  [32] hash algorithm name, NUL-terminated ("sha256")
//	64  u32  data block size in bytes
//	68  u32  hash block size in bytes
//	72  u64  number of data blocks
//	80  u16  salt size (at most 256)
//	82  [6]  padding
//	88  [256] salt
//	344 [168] padding
//
// The root hash is not in the superblock: it must come from a trusted place (the UKI's command line).
//
// Tree, hash type 1 (libcryptsetup lib/verity/verity_hash.c; Linux's
// Documentation/admin-guide/device-mapper/verity.rst): every digest is H(salt || block), salt first. Level 0 holds the digests of
// the data blocks, level i+1 the digests of the hash blocks of level i, up to a level that fits in one
// hash block; the root hash is the digest of that top block. A hash block holds 2^floor(log2(hash block
// size / digest size)) digests (128 for SHA-256 and 4 KiB), each padded with zeros to a power of two
// bytes (no padding for SHA-256), and the rest of the block is zero; the last block of a level is
// zero-padded too. There are as many levels as needed for (data blocks - 1) >> (levels * log2(digests per
// block)) to become zero, so a single data block gives no hash block at all (root = H(salt || block)).
// Levels are stored top level first: the top block, then level levels-2, ..., then level 0 last. The
// number of data blocks is floor(data device size / data block size): a trailing partial block is not
// covered.
//
// # What systemd-repart writes
//
// systemd-repart's partition_format_verity_hash() (src/partition/repart.c in systemd 255; the same call in
// src/repart/repart.c of the systemd 257 that RHEL 10 ships) calls
//
//	crypt_format(cd, CRYPT_VERITY, NULL, NULL, <verity-uuid>, NULL, 0, &(struct crypt_params_verity){
//	        .data_device = <data partition>, .flags = CRYPT_VERITY_CREATE_HASH,
//	        .hash_name = "sha256", .hash_type = 1,
//	        .data_block_size = p->verity_data_block_size, .hash_block_size = p->verity_hash_block_size,
//	        .salt_size = 32, .salt = p->verity_salt })
//
// on the hash partition. The flags lack CRYPT_VERITY_NO_HEADER, so there is a superblock at offset 0 of the
// "root-verity" partition and the tree starts at the first hash block after it; the salt is recorded only
// there (the kernel command line carries just roothash=). The salt and the superblock UUID are derived from
// repart's --seed (mkosi's Seed=): salt = HMAC-SHA256(key = seed, "verity-salt") (32 bytes), UUID = the
// first 16 bytes of HMAC-SHA256(seed, "verity-uuid") marked as a v4 UUID (see RepartSalt and RepartUUID).
// The block sizes come from VerityDataBlockSizeBytes= / VerityHashBlockSizeBytes=, defaulting to the file
// system sector size (255: in partition_format_verity_hash()), which context_load_partition_table() sets
// to 4096 (DEFAULT_FILESYSTEM_SECTOR_SIZE) when repart writes an image file and no --sector-size is given,
// mkosi's case: 4096/4096. (Debian bookworm's systemd 252 wrote 512/512 and a random salt instead.) The first 16 bytes of the root hash become the data partition's UUID and the last 16
// the hash partition's. With Minimize= the tree is computed over the minimized file system image and the
// partition may be larger than the tree; Verify ignores what follows the tree, like the kernel.
//
// # Verification
//
// Verify recomputes the whole tree from the data, streaming (memory is bounded by a few hash blocks per
// level plus the read buffers of the workers, whatever the data size), hashing data blocks on all
// GOMAXPROCS cores, compares every hash block byte for byte with the stored one (digests and zero
// padding) and the top digest with the expected root hash. A mismatch is reported as a
// *BlockMismatchError naming the level and block, or as ErrRootHashMismatch.
package verity
