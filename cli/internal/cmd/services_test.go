package cmd

import (
	"context"
	"errors"
	"testing"

	"github.com/spf13/afero"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/constellation-go/constellation/internal/constellation/services"
	"github.com/constellation-go/constellation/internal/file"
)

// fakeServices is the services' release of a fake cluster, whose AppVersion is the JoinService's image it
// was last given: installed at this CLI's images, at revision 1, unless notInstalled.
type fakeServices struct {
	notInstalled bool
	upgradeErr   error
	changes      []services.Change
	rel          services.Release
}

func newFakeServices() *fakeServices {
	return &fakeServices{rel: services.Release{Name: services.ReleaseName, AppVersion: services.DefaultImages().JoinService, Revision: 1, Status: "deployed"}}
}

func (f *fakeServices) Current(context.Context) (services.Release, error) {
	if f.notInstalled {
		return services.Release{}, services.ErrNotInstalled
	}
	return f.rel, nil
}

func (f *fakeServices) Upgrade(_ context.Context, change services.Change) (services.Release, bool, error) {
	if f.notInstalled {
		return services.Release{}, false, services.ErrNotInstalled
	}
	if f.upgradeErr != nil {
		return services.Release{}, false, f.upgradeErr
	}
	f.changes = append(f.changes, change)
	if f.rel.AppVersion == change.Images.JoinService && change.KMSURI == "" {
		return f.rel, false, nil
	}
	f.rel.AppVersion, f.rel.Revision = change.Images.JoinService, f.rel.Revision+1
	return f.rel, true, nil
}

func TestUpgradeServices(t *testing.T) {
	testCases := map[string]struct {
		svc         *fakeServices
		wantChanged bool
		wantErr     string
		wantOut     string
	}{
		"upgraded":      {svc: &fakeServices{rel: services.Release{Name: services.ReleaseName, AppVersion: "v0.0.9", Revision: 1}}, wantChanged: true, wantOut: "upgraded to constellation-services"},
		"current":       {svc: newFakeServices(), wantOut: "is current"},
		"no release":    {svc: &fakeServices{notInstalled: true}, wantOut: "deployed by an earlier release, without Helm"},
		"upgrade fails": {svc: &fakeServices{upgradeErr: errors.New("conflict")}, wantErr: "Re-run 'constellation apply'"},
	}
	for name, tc := range testCases {
		t.Run(name, func(t *testing.T) {
			fs := afero.NewMemMapFs()
			require.NoError(t, afero.WriteFile(fs, AdminConfFile, []byte("kubeconfig"), 0o600))
			e, _, errOut := testEnv(t, fs, &fakeInfra{}, nil, nil)
			e.files = file.NewHandler(fs)
			e.deps.services = func([]byte) (servicesRelease, error) { return tc.svc, nil }
			changed, err := e.upgradeServices(context.Background(), &progress{w: errOut})
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantChanged, changed)
			assert.Contains(t, errOut.String(), tc.wantOut)
		})
	}
}
