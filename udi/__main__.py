from udi.cli import main

raise SystemExit(main())
