// Package kmsuri is the contract for naming a key backend: kms://<backend>[?settings]. The CLI and the
// bootstrapper write and check these URIs; the KeyService opens the backend they name. One parser keeps the
// node from accepting (and locking itself to) a URI the KeyService would refuse later.
package kmsuri

import (
	"fmt"
	"net/url"
)

const (
	// Scheme is the URI scheme of key backends.
	Scheme = "kms"
	// ClusterKMS is the constellation-managed backend: keys derived from the cluster's master secret.
	ClusterKMS = "cluster-kms"
)

// The user-managed AWS KMS backend, kms://aws-kms?region=<region>&key-id=<key ID, ARN or alias>[&endpoint=<URL>].
const (
	AWSKMS      = "aws-kms"
	AWSRegion   = "region"
	AWSKeyID    = "key-id"
	AWSEndpoint = "endpoint"
)

// The KMS of the AWS KMS API the local provider runs on a cluster's bridge (package localkms): here, so
// that the CLI can point a configuration at it without linking the server.
const (
	LocalKMSPort   = 4599
	LocalKMSRegion = "us-east-1"
	LocalKMSAlias  = "alias/constellation"
)

// AWSKMSURI is the URI of an AWS KMS key; endpoint may be empty.
func AWSKMSURI(region, keyID, endpoint string) string {
	q := url.Values{}
	q.Set(AWSRegion, region)
	q.Set(AWSKeyID, keyID)
	if endpoint != "" {
		q.Set(AWSEndpoint, endpoint)
	}
	return (&url.URL{Scheme: Scheme, Host: AWSKMS, RawQuery: q.Encode()}).String()
}

// Default is the URI of the constellation-managed backend, used when none is given.
var Default = Scheme + "://" + ClusterKMS

// Parse checks that uri names a backend, kms://<backend>, and that the constellation-managed backend has no
// settings. It returns the parsed URI; its Host is the backend's name and its query the backend's settings.
func Parse(uri string) (*url.URL, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != Scheme || u.Host == "" {
		return nil, fmt.Errorf("key backend %q: expected a URI like %s", uri, Default)
	}
	if u.Host == ClusterKMS && (u.RawQuery != "" || (u.Path != "" && u.Path != "/")) {
		return nil, fmt.Errorf("key backend %q: %s takes no parameters", uri, ClusterKMS)
	}
	return u, nil
}
