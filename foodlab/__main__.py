from foodlab.cli import main

raise SystemExit(main())
