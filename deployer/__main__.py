from deployer.cli.main import main

raise SystemExit(main())
