package cmd

import (
	"context"
	"errors"
	"fmt"

	"github.com/constellation-go/constellation/internal/constellation/services"
	"github.com/constellation-go/constellation/internal/versions"
)

// upgradeServices moves the services' Helm release to this CLI's chart and images, keeping the values the
// cluster was installed with: the first part of an upgrade. changed says whether a revision was made.
func (e *env) upgradeServices(ctx context.Context, p *progress) (changed bool, err error) {
	helm, err := e.servicesClient()
	if err != nil {
		return false, err
	}
	p.Step("Services: %s %s", services.ReleaseName, versions.ServicesVersion)
	rel, changed, err := helm.Upgrade(ctx, services.Change{Images: services.DefaultImages()})
	if errors.Is(err, services.ErrNotInstalled) {
		p.Detail("the cluster's services were deployed by an earlier release, without Helm: they keep their version")
		p.Done()
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("upgrading the services: %w\nRe-run 'constellation apply': an interrupted upgrade "+
			"is rolled back and done again", err)
	}
	if changed {
		p.Detail("upgraded to %s", rel)
	} else {
		p.Detail("%s is current", rel)
	}
	p.Done()
	return changed, nil
}
