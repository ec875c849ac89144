package awskms

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
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

// Settings are what a kms://aws-kms URI names.
type Settings struct {
	Region, KeyID, Endpoint string
}

// ParseURI reads the settings of a kms://aws-kms URI.
func ParseURI(uri *url.URL) (Settings, error) {
	q := uri.Query()
	for name := range q {
		if !slices.Contains([]string{paramRegion, paramKeyID, paramEndpoint}, name) {
			return Settings{}, fmt.Errorf("%s: unknown setting %q (settings: %s, %s, %s; credentials come from the AWS environment, never from the URI)",
				Name, name, paramRegion, paramKeyID, paramEndpoint)
		}
	}
	s := Settings{Region: q.Get(paramRegion), KeyID: q.Get(paramKeyID), Endpoint: q.Get(paramEndpoint)}
	var missing []string
	if s.Region == "" {
		missing = append(missing, paramRegion)
	}
	if s.KeyID == "" {
		missing = append(missing, paramKeyID)
	}
	if len(missing) > 0 {
		return Settings{}, fmt.Errorf("%s: the URI needs %s", Name, strings.Join(missing, " and "))
	}
	if s.Endpoint != "" {
		if u, err := url.Parse(s.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return Settings{}, fmt.Errorf("%s: endpoint %q is not an http(s) URL", Name, s.Endpoint)
		}
	}
	return s, nil
}

// Client returns a client of the KMS API the settings name. creds nil takes the credentials of the usual
// AWS environment (variables, shared files, the instance's role).
func (s Settings) Client(ctx context.Context, creds aws.CredentialsProvider) (*kms.Client, error) {
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(s.Region)}
	if creds != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(creds))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: loading the AWS configuration: %w", Name, err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) {
		if s.Endpoint != "" {
			o.BaseEndpoint = aws.String(s.Endpoint)
		}
	}), nil
}

// Open returns the backend a kms://aws-kms URI describes, keeping wrapped keys in store. creds nil takes
// the credentials of the AWS environment.
func Open(ctx context.Context, uri *url.URL, store Store, creds aws.CredentialsProvider) (*Backend, error) {
	s, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	client, err := s.Client(ctx, creds)
	if err != nil {
		return nil, err
	}
	return New(client, s.KeyID, store)
}

// Credentials are static AWS credentials the admin gives the cluster for the KMS. They are secret: never
// logged, only in a Secret of the cluster.
type Credentials struct {
	AccessKeyID, SecretAccessKey, SessionToken string
}

// String names the access key, never the secrets.
func (c Credentials) String() string { return "AWS credentials of access key " + c.AccessKeyID }

// GoString is String: %#v must not print the secrets either.
func (c Credentials) GoString() string { return c.String() }

// Validate checks that the credentials are complete.
func (c Credentials) Validate() error {
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return fmt.Errorf("%s: the AWS credentials need an access key ID and a secret access key", Name)
	}
	return nil
}

// Provider returns the credentials for a client; nil credentials give nil (the AWS environment's).
func (c *Credentials) Provider() aws.CredentialsProvider {
	if c == nil {
		return nil
	}
	return aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken))
}

// Env returns the credentials as the environment variables the AWS SDKs read.
func (c Credentials) Env() map[string][]byte {
	env := map[string][]byte{"AWS_ACCESS_KEY_ID": []byte(c.AccessKeyID), "AWS_SECRET_ACCESS_KEY": []byte(c.SecretAccessKey)}
	if c.SessionToken != "" {
		env["AWS_SESSION_TOKEN"] = []byte(c.SessionToken)
	}
	return env
}

// ParseCredentials reads credentials in the JSON of the AWS CLI's credential_process format, which
// `aws configure export-credentials --format process` writes.
func ParseCredentials(data []byte) (Credentials, error) {
	var f struct {
		Version                       int
		AccessKeyID                   string `json:"AccessKeyId"`
		SecretAccessKey, SessionToken string
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return Credentials{}, fmt.Errorf("%s: the credentials are not the JSON of 'aws configure export-credentials --format process': %w", Name, err)
	}
	if f.Version != 1 {
		return Credentials{}, fmt.Errorf("%s: credentials of version %d; expected 1 (aws configure export-credentials --format process)", Name, f.Version)
	}
	c := Credentials{AccessKeyID: f.AccessKeyID, SecretAccessKey: f.SecretAccessKey, SessionToken: f.SessionToken}
	return c, c.Validate()
}
