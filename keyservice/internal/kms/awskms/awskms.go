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
// moving to another KMS key re-wraps every stored blob (Rewrap, with ReEncrypt), which leaves the data keys
// unchanged.
package awskms

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

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
}

// Backend hands out data keys wrapped by the KMS key KeyID.
type Backend struct {
	api   API
	keyID string
	store Store
}

// New returns the backend for the KMS key keyID (an ID, ARN or alias).
func New(api API, keyID string, store Store) (*Backend, error) {
	if keyID == "" {
		return nil, errors.New("aws-kms: the KMS key ID is required")
	}
	return &Backend{api: api, keyID: keyID, store: store}, nil
}

// storeName is where the data key of id and length is kept: a longer key of the same ID is another key.
func storeName(id string, length int) string { return fmt.Sprintf("%s.%d", id, length) }

// GetDEK returns the data key of dekID with length bytes.
func (b *Backend) GetDEK(ctx context.Context, dekID string, length int) ([]byte, error) {
	if length < 1 || length > 1024 {
		return nil, fmt.Errorf("aws-kms: data keys have 1 to 1024 bytes, not %d", length)
	}
	name := storeName(dekID, length)
	blob, err := b.store.Get(ctx, name)
	if errors.Is(err, ErrNotFound) {
		key, wrapped, genErr := b.generate(ctx, dekID, length)
		if genErr != nil {
			return nil, genErr
		}
		switch createErr := b.store.Create(ctx, name, wrapped); {
		case createErr == nil:
			return key, nil
		case !errors.Is(createErr, ErrExists):
			return nil, fmt.Errorf("aws-kms: storing the wrapped data key %s: %w", dekID, createErr)
		}
		// Another request stored one first: use that one, as every later request will.
		blob, err = b.store.Get(ctx, name)
	}
	if err != nil {
		return nil, fmt.Errorf("aws-kms: reading the wrapped data key %s: %w", dekID, err)
	}
	return b.unwrap(ctx, dekID, length, blob)
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

func (b *Backend) unwrap(ctx context.Context, dekID string, length int, blob []byte) ([]byte, error) {
	out, err := b.api.Decrypt(ctx, &kms.DecryptInput{
		CiphertextBlob: blob, KeyId: aws.String(b.keyID), EncryptionContext: map[string]string{contextKey: dekID},
	})
	if err != nil {
		return nil, fmt.Errorf("aws-kms: the KMS (key %s) did not unwrap data key %s: %w", b.keyID, dekID, err)
	}
	if len(out.Plaintext) != length {
		return nil, fmt.Errorf("aws-kms: the KMS unwrapped data key %s to %d bytes, not %d: refusing it", dekID, len(out.Plaintext), length)
	}
	return out.Plaintext, nil
}

// Rewrap wraps every stored data key with the KMS key newKeyID instead (ReEncrypt: the keys themselves do
// not change) and makes the backend use it. A failure leaves each blob wrapped by one of the two keys,
// which the KMS can still unwrap, so a re-run finishes the job.
func (b *Backend) Rewrap(ctx context.Context, newKeyID string) error {
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
		encCtx := map[string]string{contextKey: id}
		// The blob names the key that wrapped it; ReEncrypt unwraps with that one, whichever it is.
		out, err := b.api.ReEncrypt(ctx, &kms.ReEncryptInput{
			CiphertextBlob: blob, DestinationKeyId: aws.String(newKeyID),
			SourceEncryptionContext: encCtx, DestinationEncryptionContext: encCtx,
		})
		if err != nil {
			return fmt.Errorf("aws-kms: re-wrapping data key %s with key %s: %w", id, newKeyID, err)
		}
		if len(out.CiphertextBlob) == 0 {
			return fmt.Errorf("aws-kms: the KMS answered no re-wrapped key for %s", id)
		}
		if err := b.store.Update(ctx, name, out.CiphertextBlob); err != nil {
			return fmt.Errorf("aws-kms: storing the re-wrapped data key %s: %w", id, err)
		}
	}
	b.keyID = newKeyID
	return nil
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
