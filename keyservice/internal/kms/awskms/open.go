package awskms

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/constellation-go/constellation/internal/kmsuri"
)

// Name is the backend's name in kms://<name> URIs.
const Name = kmsuri.AWSKMS

// The settings of kms://aws-kms?region=<region>&key-id=<key ID, ARN or alias>[&endpoint=<URL>]. Credentials
// come from the usual AWS environment (variables, shared files, the instance's role), never from the URI,
// which the cluster keeps in plain sight.
const (
	paramRegion   = kmsuri.AWSRegion
	paramKeyID    = kmsuri.AWSKeyID
	paramEndpoint = kmsuri.AWSEndpoint
)

// Open returns the backend a kms://aws-kms URI describes, keeping wrapped keys in store.
func Open(ctx context.Context, uri *url.URL, store Store) (*Backend, error) {
	q := uri.Query()
	for name := range q {
		if !slices.Contains([]string{paramRegion, paramKeyID, paramEndpoint}, name) {
			return nil, fmt.Errorf("%s: unknown setting %q (settings: %s, %s, %s; credentials come from the AWS environment, never from the URI)",
				Name, name, paramRegion, paramKeyID, paramEndpoint)
		}
	}
	region, keyID, endpoint := q.Get(paramRegion), q.Get(paramKeyID), q.Get(paramEndpoint)
	var missing []string
	if region == "" {
		missing = append(missing, paramRegion)
	}
	if keyID == "" {
		missing = append(missing, paramKeyID)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s: the URI needs %s", Name, strings.Join(missing, " and "))
	}
	if endpoint != "" {
		if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("%s: endpoint %q is not an http(s) URL", Name, endpoint)
		}
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region))
	if err != nil {
		return nil, fmt.Errorf("%s: loading the AWS configuration: %w", Name, err)
	}
	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	})
	return New(client, keyID, store)
}
