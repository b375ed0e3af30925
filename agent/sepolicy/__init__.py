"""SELinux policy modules from denials: rules generated (pure), then built with checkmodule/semodule_package and
installed with semodule."""
