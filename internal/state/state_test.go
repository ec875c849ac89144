package state

import (
	"bytes"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/file"
)

func validState() *State {
	s := New()
	s.Infrastructure = Infrastructure{
		UID:               "abc123",
		Provider:          "local",
		Name:              "constell",
		ClusterEndpoint:   "10.42.0.2",
		InClusterEndpoint: "10.42.0.2",
		InitSecretHash:    bytes.Repeat([]byte{1}, 32),
		APIServerCertSANs: []string{"10.42.0.2"},
		IPCidrNode:        "10.42.0.0/24",
	}
	s.ClusterValues = ClusterValues{
		ClusterID:       bytes.Repeat([]byte{2}, 32),
		OwnerID:         bytes.Repeat([]byte{3}, 32),
		MeasurementSalt: bytes.Repeat([]byte{4}, 32),
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	fh := file.NewHandler(afero.NewMemMapFs())
	s := validState()
	require.NoError(t, s.Write(fh, FileName))
	got, err := Read(fh, FileName)
	require.NoError(t, err)
	assert.Equal(t, s, got)
	assert.True(t, got.HasInfrastructure())
	assert.True(t, got.IsInitialized())

	// Writing again replaces the file.
	s.Infrastructure.Name = "renamed"
	require.NoError(t, s.Write(fh, FileName))
	got, err = Read(fh, FileName)
	require.NoError(t, err)
	assert.Equal(t, "renamed", got.Infrastructure.Name)
}

func TestNewIsValidAndEmpty(t *testing.T) {
	s := New()
	require.NoError(t, s.Validate())
	assert.False(t, s.HasInfrastructure())
	assert.False(t, s.IsInitialized())
}

func TestValidate(t *testing.T) {
	testCases := map[string]struct {
		edit      func(s *State)
		wantField string
	}{
		"version":                       {edit: func(s *State) { s.Version = "v9" }, wantField: "version"},
		"uid":                           {edit: func(s *State) { s.Infrastructure.UID = "UPPER" }, wantField: "infrastructure.uid"},
		"provider":                      {edit: func(s *State) { s.Infrastructure.Provider = "mars" }, wantField: "infrastructure.provider"},
		"endpoint":                      {edit: func(s *State) { s.Infrastructure.ClusterEndpoint = "" }, wantField: "infrastructure.clusterEndpoint"},
		"init secret hash":              {edit: func(s *State) { s.Infrastructure.InitSecretHash = []byte{1} }, wantField: "infrastructure.initSecretHash"},
		"node cidr":                     {edit: func(s *State) { s.Infrastructure.IPCidrNode = "nope" }, wantField: "infrastructure.ipCidrNode"},
		"cluster id":                    {edit: func(s *State) { s.ClusterValues.ClusterID = []byte{1, 2} }, wantField: "clusterValues.clusterID"},
		"owner id":                      {edit: func(s *State) { s.ClusterValues.OwnerID = nil }, wantField: "clusterValues.ownerID"},
		"salt":                          {edit: func(s *State) { s.ClusterValues.MeasurementSalt = []byte{1} }, wantField: "clusterValues.measurementSalt"},
		"values without infrastructure": {edit: func(s *State) { s.Infrastructure = Infrastructure{} }, wantField: "clusterValues"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			s := validState()
			tc.edit(s)
			err := s.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), `field "`+tc.wantField+`"`)

			fh := file.NewHandler(afero.NewMemMapFs())
			err = s.Write(fh, FileName)
			require.ErrorIs(t, err, ErrInvalid)
			ok, _ := fh.Exists(FileName)
			assert.False(t, ok, "an invalid state must not be written")
		})
	}
}

func TestReadRejects(t *testing.T) {
	testCases := map[string]string{
		"unknown field": "version: v1\ninfrastructure: {}\nclusterValues: {}\nextra: 1\n",
		"bad hex":       "version: v1\ninfrastructure: {}\nclusterValues: {clusterID: zz}\n",
		"wrong version": "version: v0\ninfrastructure: {}\nclusterValues: {}\n",
	}
	for name, content := range testCases {
		t.Run(name, func(t *testing.T) {
			fh := file.NewHandler(afero.NewMemMapFs())
			require.NoError(t, fh.Write(FileName, []byte(content)))
			_, err := Read(fh, FileName)
			assert.Error(t, err)
		})
	}
	_, err := Read(file.NewHandler(afero.NewMemMapFs()), FileName)
	assert.Error(t, err)
}
