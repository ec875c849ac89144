package server

import (
	"context"

	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

// KeyServiceClient fetches keys from the KeyService's gRPC API.
type KeyServiceClient struct {
	client keyserviceproto.APIClient
}

// NewKeyServiceClient returns a KeyGetter over client.
func NewKeyServiceClient(client keyserviceproto.APIClient) *KeyServiceClient {
	return &KeyServiceClient{client: client}
}

// GetDataKey returns the key for id and, with user-managed keys, its wrapped form.
func (k *KeyServiceClient) GetDataKey(ctx context.Context, id string, length int) (key, wrapped []byte, err error) {
	resp, err := k.client.GetDataKey(ctx, &keyserviceproto.GetDataKeyRequest{DataKeyId: id, Length: uint32(length)})
	if err != nil {
		return nil, nil, err
	}
	return resp.GetDataKey(), resp.GetWrappedDataKey(), nil
}
