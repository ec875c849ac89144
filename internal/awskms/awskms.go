// Package awskms is the user-managed key backend on the AWS KMS API: the key-encryption key is a KMS key
// and never leaves the KMS.
//
// Envelope encryption: the first request for a data key ID asks the KMS to generate a data key
// (GenerateDataKey) and stores only its wrapped form (the ciphertext blob) in a Store; every later request
// for the ID unwraps the stored blob (Decrypt). So an ID gives the same key for the life of the cluster,
// and what the cluster keeps is useless without the KMS. Every blob is bound to its data key ID through
// the KMS encryption context, so a blob moved to another ID's entry does not unwrap.
//
// Rotation: a new version of the same KMS key needs nothing (the KMS unwraps blobs of older versions);
// moving to another KMS key re-wraps every stored blob (Adopt, with ReEncrypt), which leaves the data keys
// unchanged.
package awskms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// contextKey names the data key ID in the KMS encryption context.
const contextKey = "constellation-data-key-id"

var (
	// ErrNotFound is returned by a Store for a name it holds nothing under.
	ErrNotFound = errors.New("no wrapped data key stored")
	// ErrExists is returned by Store.Create when a blob is stored under the name already.
	ErrExists = errors.New("a wrapped data key is stored already")
)

// Store keeps the wrapped data keys. Create must be atomic: of two concurrent Creates for a name, one
// fails with ErrExists.
type Store interface {
	Get(ctx context.Context, name string) ([]byte, error)
	Create(ctx context.Context, name string, blob []byte) error
	Update(ctx context.Context, name string, blob []byte) error
	List(ctx context.Context) ([]string, error)
}

// API is the part of the KMS API the backend uses (*kms.Client).
type API interface {
	GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, opts ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error)
	Decrypt(ctx context.Context, in *kms.DecryptInput, opts ...func(*kms.Options)) (*kms.DecryptOutput, error)
	ReEncrypt(ctx context.Context, in *kms.ReEncryptInput, opts ...func(*kms.Options)) (*kms.ReEncryptOutput, error)
	DescribeKey(ctx context.Context, in *kms.DescribeKeyInput, opts ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
}

// CallTimeout bounds one data key request to the KMS: shorter than a joining node's attempt (30 s), so that
// a KMS that hangs is named in the node's error rather than hidden behind the node's own deadline.
const CallTimeout = 10 * time.Second

// Backend hands out data keys wrapped by the KMS key KeyID.
type Backend struct {
	api   API
	keyID string
	store Store
	// timeout bounds each DataKey (CallTimeout).
	timeout time.Duration
}

// New returns the backend for the KMS key keyID (an ID, ARN or alias).
func New(api API, keyID string, store Store) (*Backend, error) {
	if keyID == "" {
		return nil, errors.New("aws-kms: the KMS key ID is required")
	}
	return &Backend{api: api, keyID: keyID, store: store, timeout: CallTimeout}, nil
}

// storeName is where the data key of id and length is kept: a longer key of the same ID is another key.
func storeName(id string, length int) string { return fmt.Sprintf("%s.%d", id, length) }

// GetDEK returns the data key of dekID with length bytes.
func (b *Backend) GetDEK(ctx context.Context, dekID string, length int) ([]byte, error) {
	key, _, err := b.DataKey(ctx, dekID, length)
	return key, err
}

// DataKey returns the data key of dekID with length bytes and its wrapped form, as stored.
func (b *Backend) DataKey(ctx context.Context, dekID string, length int) (key, wrapped []byte, err error) {
	if length < 1 || length > 1024 {
		return nil, nil, fmt.Errorf("aws-kms: data keys have 1 to 1024 bytes, not %d", length)
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	name := storeName(dekID, length)
	blob, err := b.store.Get(ctx, name)
	if errors.Is(err, ErrNotFound) {
		key, wrapped, genErr := b.generate(ctx, dekID, length)
		if genErr != nil {
			return nil, nil, genErr
		}
		switch createErr := b.store.Create(ctx, name, wrapped); {
		case createErr == nil:
			return key, wrapped, nil
		case !errors.Is(createErr, ErrExists):
			return nil, nil, fmt.Errorf("aws-kms: storing the wrapped data key %s: %w", dekID, createErr)
		}
		// Another request stored one first: use that one, as every later request will.
		blob, err = b.store.Get(ctx, name)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("aws-kms: reading the wrapped data key %s: %w", dekID, err)
	}
	key, err = Unwrap(ctx, b.api, b.keyID, dekID, length, blob)
	if err != nil {
		return nil, nil, err
	}
	return key, blob, nil
}

func (b *Backend) generate(ctx context.Context, dekID string, length int) (key, blob []byte, err error) {
	out, err := b.api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
		KeyId: aws.String(b.keyID), NumberOfBytes: aws.Int32(int32(length)),
		EncryptionContext: map[string]string{contextKey: dekID},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("aws-kms: the KMS (key %s) did not generate data key %s: %w", b.keyID, dekID, err)
	}
	if len(out.Plaintext) != length || len(out.CiphertextBlob) == 0 {
		return nil, nil, fmt.Errorf("aws-kms: the KMS answered with a %d-byte data key and a %d-byte wrapped key for %s, not a %d-byte key: refusing it",
			len(out.Plaintext), len(out.CiphertextBlob), dekID, length)
	}
	return out.Plaintext, out.CiphertextBlob, nil
}

// Decrypter is the part of the KMS API that unwraps.
type Decrypter interface {
	Decrypt(ctx context.Context, in *kms.DecryptInput, opts ...func(*kms.Options)) (*kms.DecryptOutput, error)
}

// Unwrap unwraps blob, the wrapped data key of dekID with length bytes. keyID is the KMS key expected to
// have wrapped it; empty lets the KMS take the key the blob names (a recovery after a move to another key
// may hold a blob of the old one).
func Unwrap(ctx context.Context, api Decrypter, keyID, dekID string, length int, blob []byte) ([]byte, error) {
	in := &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{contextKey: dekID}}
	if keyID != "" {
		in.KeyId = aws.String(keyID)
	}
	out, err := api.Decrypt(ctx, in)
	if err != nil {
		if keyID == "" {
			keyID = "named by the wrapped key"
		}
		return nil, fmt.Errorf("aws-kms: the KMS (key %s) did not unwrap data key %s: %w", keyID, dekID, err)
	}
	if len(out.Plaintext) != length {
		return nil, fmt.Errorf("aws-kms: the KMS unwrapped data key %s to %d bytes, not %d: refusing it", dekID, len(out.Plaintext), length)
	}
	return out.Plaintext, nil
}

// Adopt re-wraps with the backend's KMS key every stored data key another KMS key wrapped: after the
// configuration moved to a new key, the KeyService adopts the keys of the old one when it starts (the old
// key must still unwrap until then). It returns how many it re-wrapped; the keys themselves do not change.
func (b *Backend) Adopt(ctx context.Context) (int, error) {
	n := 0
	err := b.eachForeign(ctx, func(name, id string, blob []byte) error {
		if err := b.rewrapOne(ctx, name, id, blob, b.keyID); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}

// Foreign counts the stored data keys another KMS key wrapped: zero once a KeyService adopted them.
func (b *Backend) Foreign(ctx context.Context) (int, error) {
	n := 0
	err := b.eachForeign(ctx, func(string, string, []byte) error {
		n++
		return nil
	})
	return n, err
}

// eachForeign calls f for each stored data key another KMS key than the backend's wrapped.
func (b *Backend) eachForeign(ctx context.Context, f func(name, id string, blob []byte) error) error {
	desc, err := b.api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(b.keyID)})
	if err != nil {
		return fmt.Errorf("aws-kms: the KMS did not describe key %s: %w", b.keyID, err)
	}
	if desc.KeyMetadata == nil || aws.ToString(desc.KeyMetadata.Arn) == "" {
		return fmt.Errorf("aws-kms: the KMS described key %s without its ARN", b.keyID)
	}
	own := aws.ToString(desc.KeyMetadata.Arn)
	return b.eachStored(ctx, func(name, id string, blob []byte) error {
		out, err := b.api.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{contextKey: id}})
		if err != nil {
			return fmt.Errorf("aws-kms: the KMS did not unwrap data key %s (wrapped by another key?): %w", id, err)
		}
		if aws.ToString(out.KeyId) == own {
			return nil
		}
		return f(name, id, blob)
	})
}

// eachStored calls f for each stored data key, in the order of their names, with its data key ID.
func (b *Backend) eachStored(ctx context.Context, f func(name, id string, blob []byte) error) error {
	names, err := b.store.List(ctx)
	if err != nil {
		return fmt.Errorf("aws-kms: listing the wrapped data keys: %w", err)
	}
	sort.Strings(names)
	for _, name := range names {
		blob, err := b.store.Get(ctx, name)
		if err != nil {
			return fmt.Errorf("aws-kms: reading %s: %w", name, err)
		}
		id, _, err := parseStoreName(name)
		if err != nil {
			return err
		}
		if err := f(name, id, blob); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) rewrapOne(ctx context.Context, name, id string, blob []byte, newKeyID string) error {
	rewrapped, err := Rewrap(ctx, b.api, id, blob, newKeyID)
	if err != nil {
		return err
	}
	if err := b.store.Update(ctx, name, rewrapped); err != nil {
		return fmt.Errorf("aws-kms: storing the re-wrapped data key %s: %w", id, err)
	}
	return nil
}

// ReEncrypter is the part of the KMS API that re-wraps.
type ReEncrypter interface {
	ReEncrypt(ctx context.Context, in *kms.ReEncryptInput, opts ...func(*kms.Options)) (*kms.ReEncryptOutput, error)
}

// Rewrap returns blob, the wrapped data key of dekID, wrapped by the KMS key newKeyID instead; the key
// itself does not change.
func Rewrap(ctx context.Context, api ReEncrypter, dekID string, blob []byte, newKeyID string) ([]byte, error) {
	encCtx := map[string]string{contextKey: dekID}
	// The blob names the key that wrapped it; ReEncrypt unwraps with that one, whichever it is.
	out, err := api.ReEncrypt(ctx, &kms.ReEncryptInput{
		CiphertextBlob: blob, DestinationKeyId: aws.String(newKeyID),
		SourceEncryptionContext: encCtx, DestinationEncryptionContext: encCtx,
	})
	if err != nil {
		return nil, fmt.Errorf("aws-kms: re-wrapping data key %s with key %s: %w", dekID, newKeyID, err)
	}
	if len(out.CiphertextBlob) == 0 {
		return nil, fmt.Errorf("aws-kms: the KMS answered no re-wrapped key for %s", dekID)
	}
	return out.CiphertextBlob, nil
}

// parseStoreName splits a store name into the data key ID and the length.
func parseStoreName(name string) (string, int, error) {
	i := strings.LastIndexByte(name, '.')
	if i >= 0 {
		if n, err := strconv.Atoi(name[i+1:]); err == nil && n > 0 {
			return name[:i], n, nil
		}
	}
	return "", 0, fmt.Errorf("aws-kms: %q is not the name of a wrapped data key", name)
}

// Seed stores blob, the wrapped data key of dekID with length bytes that was generated elsewhere (the first
// control plane wraps its own disk key before any KeyService runs), so that the backend hands out the same
// key for the ID. The same blob stored already is fine; another one is an error: a second key for a disk.
func Seed(ctx context.Context, store Store, dekID string, length int, blob []byte) error {
	name := storeName(dekID, length)
	err := store.Create(ctx, name, blob)
	if errors.Is(err, ErrExists) {
		stored, getErr := store.Get(ctx, name)
		if getErr != nil {
			return fmt.Errorf("aws-kms: reading the wrapped data key %s: %w", dekID, getErr)
		}
		if bytes.Equal(stored, blob) {
			return nil
		}
		return fmt.Errorf("aws-kms: another wrapped data key is stored for %s", dekID)
	}
	if err != nil {
		return fmt.Errorf("aws-kms: storing the wrapped data key %s: %w", dekID, err)
	}
	return nil
}
